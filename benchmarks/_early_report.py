"""The summary and report of benchmarks/early_stopping.py: hypervolume against compute spent
per strategy and seed, the compute each needs to reach the full-fidelity study's front, and how
well each rung's accuracy ranks the final one."""

from __future__ import annotations

import json
import math
import platform
import statistics
from collections.abc import Sequence
from typing import Any

import pandas as pd

from reports import hypervolume

STRATEGIES = ("full", "mo-asha", "mo-asha+skip")


def hv_curve(
    rows: list[dict[str, Any]], objectives: Sequence[tuple[str, str]], ref: dict[str, float]
) -> list[tuple[float, float]]:
    """(compute spent, hypervolume of the full-fidelity trials so far) after each trial."""
    out: list[tuple[float, float]] = []
    done: list[dict[str, Any]] = []
    for row in rows:
        if row["status"] == "FINISHED":
            done.append({**{m: row[m] for m, _ in objectives}, "status": "FINISHED"})
        hv = hypervolume(pd.DataFrame(done), objectives, ref) if done else 0.0
        out.append((row["spent"], hv))
    return out


def compute_to_reach(curve: list[tuple[float, float]], target: float) -> float:
    return next((spent for spent, hv in curve if hv >= target - 1e-12), math.nan)


def hv_at_compute(curve: list[tuple[float, float]], budget: float) -> float:
    return max((hv for spent, hv in curve if spent <= budget + 1e-9), default=0.0)


def kendall_by_rung(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Kendall's tau between each rung's accuracy and the final accuracy (finished trials)."""
    done = [r for r in rows if r["status"] == "FINISHED" and "accuracy" in r]
    out: dict[str, float] = {}
    epochs = sorted({int(e) for r in done for e in r["rungs"]})
    for epoch in epochs:
        pairs = [(r["rungs"][str(epoch)], r["accuracy"]) for r in done if str(epoch) in r["rungs"]]
        if len(pairs) >= 3:
            df = pd.DataFrame(pairs, columns=["rung", "final"])
            out[str(epoch)] = float(df["rung"].corr(df["final"], method="kendall"))
    return out


def summarize(
    studies: list[dict[str, Any]], objectives: Sequence[tuple[str, str]], ref: dict[str, float]
) -> dict[str, Any]:
    by = {(s["strategy"], s["seed"]): s["rows"] for s in studies}
    seeds = sorted({s["seed"] for s in studies})
    table: dict[str, dict[str, list[float]]] = {k: {} for k in STRATEGIES}
    for seed in seeds:
        full = by[("full", seed)]
        full_curve = hv_curve(full, objectives, ref)
        target, budget = full_curve[-1][1], full_curve[-1][0]
        for strategy in STRATEGIES:
            rows = by[(strategy, seed)]
            curve = hv_curve(rows, objectives, ref)
            reach = compute_to_reach(curve, target)
            cells = {
                "compute_to_full_hv_s": reach,
                "compute_ratio": reach / budget if budget else math.nan,
                "hv_at_equal_compute": hv_at_compute(curve, budget),
                "trials": float(len(rows)),
                "stopped": float(sum(r["status"] == "STOPPED" for r in rows)),
                "full_hv": target,
                "full_compute_s": budget,
            }
            for key, value in cells.items():
                table[strategy].setdefault(key, []).append(value)
    taus = [kendall_by_rung(by[("full", seed)]) for seed in seeds]
    return {"table": table, "kendall": taus}


def _median(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return statistics.median(vals) if vals else math.nan


def render(summary: dict[str, Any], *, command: str, n: int, seconds: float) -> str:
    lines = [
        f"`{command}` ({platform.node()}, {seconds / 60:.1f} min)",
        "",
        f"| strategy | compute to reach full's HV@{n} (s) | ratio to full | HV at equal compute "
        "| trials | stopped |",
        "|---|---|---|---|---|---|",
    ]
    for strategy, cells in summary["table"].items():
        if not cells:
            continue
        lines.append(
            f"| {strategy} | {_median(cells['compute_to_full_hv_s']):.0f} "
            f"| {_median(cells['compute_ratio']):.2f} "
            f"| {_median(cells['hv_at_equal_compute']):.4f} "
            f"| {_median(cells['trials']):.0f} | {_median(cells['stopped']):.0f} |"
        )
    lines.append("")
    lines.append("Medians over seeds; per seed: " + json.dumps(summary["table"], default=str))
    lines.append(
        "Kendall tau, rung accuracy vs final accuracy (full study, per seed): "
        + json.dumps(summary["kendall"])
    )
    return "\n".join(lines)
