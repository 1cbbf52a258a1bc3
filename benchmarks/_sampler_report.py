"""The report of benchmarks/sampler_efficiency.py: each sampler's median hypervolume after k
trials, per seed at its budget, and how many trials random search needs to reach the
default's front."""

from __future__ import annotations

import math
import os
import platform
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from reports import hypervolume

if TYPE_CHECKING:
    from benchmarks.sampler_efficiency import Study, Variant
    from searchspace import SearchSpec

CHECKPOINTS = (8, 16, 32, 64, 96, 128)


def hv_at(st: Study, k: int, objectives: Sequence[tuple[str, str]], ref: dict[str, float]) -> float:
    """Hypervolume of the study's first ``k`` proposed trials (NaN if it has fewer)."""
    rows = sorted(st.rows, key=lambda r: r["number"])
    if len(rows) < k:
        return float("nan")
    df = pd.DataFrame(rows[:k])
    df["status"] = ["FINISHED" if r.get("ok") else "FAILED" for r in rows[:k]]
    for metric, _ in objectives:
        if metric not in df:
            df[metric] = float("nan")
    return hypervolume(df, objectives, ref)


def _median(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return statistics.median(vals) if vals else float("nan")


def render(
    studies: list[Study],
    variants: list[Variant],
    seeds: list[int],
    *,
    spec: SearchSpec,
    ref: dict[str, float],
    baseline: dict[str, float],
    budget: int,
    command: str,
    workers: int,
    wall_s: float,
    deadline_hit: bool,
) -> str:
    objectives = [(o.metric, o.direction) for o in spec.objectives]
    trial_s = [r["seconds"] for st in studies for r in st.rows]
    failed = sum(1 for st in studies for r in st.rows if not r.get("ok"))
    out = [
        "# Sampler efficiency: hypervolume after N trials, median over seeds",
        "",
        f"command: {command}",
        f"machine: {os.cpu_count()} CPUs ({platform.machine()}), python "
        f"{platform.python_version()}; {workers} worker processes, one torch thread each "
        "(CPU trials, no GPU)",
        f"task {spec.task!r}, space and objectives of the config "
        f"({', '.join(f'{m} {d}' for m, d in objectives)}), {spec.training.epochs} epochs, "
        f"latency warmup {spec.latency.warmup} / repeats {spec.latency.repeats}, "
        f"{spec.concurrency} trials in flight per study (random: unlimited)",
        "reference point (2x the dense baseline's costs, accuracy 0): "
        + ", ".join(f"{k} {v:.6g}" for k, v in ref.items()),
        "baseline: " + ", ".join(f"{m} {baseline[m]:.6g}" for m, _ in objectives),
        f"{sum(len(st.rows) for st in studies)} trials ({failed} failed), "
        f"{statistics.fmean(trial_s):.1f} s per trial (median {statistics.median(trial_s):.1f}), "
        f"{wall_s:.0f} s in all"
        + ("; DEADLINE HIT: some studies are incomplete" if deadline_hit else ""),
        "",
    ]
    ks = sorted({*CHECKPOINTS, budget, *(v.budget for v in variants)})
    head = ["sampler", "trials"] + [f"HV@{k}" for k in ks] + ["per seed at its budget"]
    table = []
    medians: dict[str, dict[int, float]] = {}
    for v in variants:
        mine = [st for st in studies if st.variant is v]
        row: list[str] = [v.label, str(v.budget)]
        medians[v.label] = {}
        for k in ks:
            if k > v.budget:
                row.append("")
                continue
            values = [hv_at(st, k, objectives, ref) for st in mine]
            med = _median(values)
            medians[v.label][k] = med
            seeds_in = sum(not math.isnan(x) for x in values)
            short = f" (n={seeds_in})" if 0 < seeds_in < len(mine) else ""
            row.append("" if math.isnan(med) else f"{med:.4f}{short}")
        per_seed = [
            f"s{st.seed}={hv_at(st, v.budget, objectives, ref):.4f}"
            + ("" if st.done else f" (only {len(st.rows)})")
            for st in mine
        ]
        row.append(" ".join(per_seed))
        table.append(row)
    widths = [max(len(r[i]) for r in [head, *table]) for i in range(len(head))]
    for r in [head, *table]:
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    default = next((v for v in variants if v.label.startswith("default")), None)
    random = next((v for v in variants if v.label == "random"), None)
    out.append("")
    if default is not None and random is not None:
        target = medians[default.label].get(budget, float("nan"))
        randoms = [st for st in studies if st.variant is random]
        curve = {
            k: _median([hv_at(st, k, objectives, ref) for st in randoms])
            for k in range(1, random.budget + 1)
        }
        reach = next((k for k, hv in curve.items() if hv >= target), None)
        at_full = curve.get(random.budget, float("nan"))
        out.append(
            f"default after {budget}: median HV {target:.4f}; random after {random.budget}: "
            f"{at_full:.4f} ({'default >= random' if target >= at_full else 'random > default'})"
        )
        out.append(
            "random search reaches the default's median HV@"
            f"{budget} after "
            + (
                f"{reach} trials ({reach / budget:.1f}x the trials)"
                if reach
                else f"more than {random.budget} trials (not within its budget)"
            )
        )
        out.append(f"ranking at the budget (median HV@{budget}):")
        ranked = sorted(
            ((lbl, m.get(budget, float("nan"))) for lbl, m in medians.items()),
            key=lambda x: -x[1] if not math.isnan(x[1]) else math.inf,
        )
        out += [f"  {lbl}: {hv:.4f}" for lbl, hv in ranked]
    return "\n".join(out) + "\n"
