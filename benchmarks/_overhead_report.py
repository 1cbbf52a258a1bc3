"""The summary and the report of benchmarks/orchestration_overhead.py: what a run of fixed
workloads cost beyond the workload itself, and the Markdown it prints."""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from benchmarks._overhead_timeline import timeline_table

if TYPE_CHECKING:
    from benchmarks.orchestration_overhead import PlainRun, SlimtuneRun, Timed


@dataclass(frozen=True)
class Overhead:
    """What a run of ``trials`` workloads at ``concurrency`` cost beyond the workload itself.

    The slot time that was not workload (``span x concurrency - work``) splits, per worker, into
    the wait before its first workload (``lead_s``), the gaps between its workloads
    (``gaps_s``) and the time after its last one (``tail_s``), when there were ``concurrency``
    workers (else the split is not printed)."""

    trials: int
    concurrency: int
    workers: int
    work_s: float  # sum of the workloads' wall times
    work_cpu_s: float  # sum of the workloads' CPU times
    first_start: float
    last_end: float
    gaps_ms: tuple[float, ...]
    lead_s: float
    tail_s: float

    @property
    def span_s(self) -> float:
        return self.last_end - self.first_start

    @property
    def ideal_s(self) -> float:
        return self.work_s / self.concurrency

    @property
    def ratio(self) -> float:
        return self.span_s / self.ideal_s

    @property
    def fixed_cost_ms(self) -> float:
        return 1000 * (self.span_s * self.concurrency - self.work_s) / self.trials

    @property
    def gap_median_ms(self) -> float:
        return statistics.median(self.gaps_ms) if self.gaps_ms else float("nan")


def summarize(runs: Sequence[Timed], concurrency: int) -> Overhead:
    if not runs:
        raise SystemExit("no trial finished its workload; nothing to measure")
    first, last = min(t.start for t in runs), max(t.end for t in runs)
    gaps: list[float] = []
    lead = tail = 0.0
    by_worker: dict[str, list[Timed]] = {}
    for t in runs:
        by_worker.setdefault(t.worker, []).append(t)
    for ts in by_worker.values():
        ts.sort(key=lambda t: t.start)
        gaps += [1000 * (b.start - a.end) for a, b in itertools.pairwise(ts)]
        lead += ts[0].start - first
        tail += last - ts[-1].end
    return Overhead(
        trials=len(runs),
        concurrency=concurrency,
        workers=len(by_worker),
        work_s=sum(t.end - t.start for t in runs),
        work_cpu_s=sum(t.cpu for t in runs),
        first_start=first,
        last_end=last,
        gaps_ms=tuple(gaps),
        lead_s=lead,
        tail_s=tail,
    )


def _row(name: str, values: Sequence[str]) -> str:
    return f"| {name} | " + " | ".join(values) + " |"


def report(
    args: argparse.Namespace,
    passes: int,
    rate: float,
    load: tuple[float, float],
    slim: SlimtuneRun | None,
    plain: PlainRun | None,
) -> str:
    cols: list[tuple[str, Overhead]] = []
    if slim:
        cols.append(("slimtune", slim.overhead))
    if plain:
        cols.append(("plain Optuna", plain.overhead))
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])
    lines = [
        f"#### {args.trials} trials x {args.seconds:g} s at concurrency {args.concurrency}",
        "",
        f"Command: `{command}`  ",
        f"Taken {time.strftime('%Y-%m-%d %H:%M')} on {platform.node() or 'this machine'} "
        f"({os.cpu_count()} CPUs); load average (1 min) {load[0]:.2f} before, {load[1]:.2f} "
        f"after. Workload: {passes} SHA-256 passes over 1 MiB ({rate:.0f} passes/s when "
        "calibrated).",
        "",
        _row("", [n for n, _ in cols]),
        _row("---", ["---:"] * len(cols)),
        _row("trials", [str(o.trials) for _, o in cols]),
        _row("sum of workload times (s)", [f"{o.work_s:.2f}" for _, o in cols]),
        _row(f"ideal = sum / {args.concurrency} (s)", [f"{o.ideal_s:.2f}" for _, o in cols]),
        _row("first start -> last end (s)", [f"{o.span_s:.2f}" for _, o in cols]),
        _row("**span / ideal**", [f"**{o.ratio:.3f}x**" for _, o in cols]),
        _row("**fixed cost per trial (ms)**", [f"**{o.fixed_cost_ms:.0f}**" for _, o in cols]),
        _row(
            "gap between workloads in one worker: median / mean / max (ms)",
            [
                f"{o.gap_median_ms:.0f} / {statistics.fmean(o.gaps_ms or [0]):.0f} / "
                f"{max(o.gaps_ms or [0]):.0f}"
                for _, o in cols
            ],
        ),
        _row(
            "slot time not in workload: before first / gaps / after last (s)",
            [
                f"{o.lead_s:.2f} / {sum(o.gaps_ms) / 1000:.2f} / {o.tail_s:.2f}"
                if o.workers == o.concurrency
                else f"({o.workers} workers)"
                for _, o in cols
            ],
        ),
    ]
    if slim and plain:
        lines.append(_row("whole run (s)", [f"{slim.wall_s:.1f}", f"{plain.wall_s:.1f}"]))
    if slim:
        phases = "; ".join(f"{n} {s:.2f}" for n, s in slim.phases)
        cpu = "; ".join(f"{k} {v:.2f}" for k, v in slim.cpu_in_span.items())
        lines += [
            "",
            f"slimtune's whole run {slim.wall_s:.1f} s (run_search called -> returned), by phase "
            f"(s): {phases}.",
            f"CPU seconds used during the trial span beyond the workload, by process: {cpu}.",
            f"Per trial in the worker (median): MLflow run created -> workload starts "
            f"{slim.mlflow_before_ms:.0f} ms; workload ends -> run terminated "
            f"{slim.mlflow_after_ms:.0f} ms. Live front update in the driver: "
            f"{slim.live_update_ms:.0f} ms per trial (mean).",
            "",
            "Where the gap between two workloads in one worker goes (the driver's Tune events, "
            "the worker's MLflow run times and workload times; one clock):",
            "",
            *timeline_table(slim.timeline),
        ]
    if plain:
        lines.append(
            f"Plain Optuna: whole optimize() {plain.wall_s:.1f} s; CPU seconds beyond the "
            f"workload {plain.cpu_beyond_work_s:.2f}."
        )
    return "\n".join(lines)
