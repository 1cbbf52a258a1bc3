"""When the driver saw each trial start, report and complete, paired with the workers' MLflow
and workload times: where the gap between two trials in one worker goes (for
benchmarks/orchestration_overhead.py)."""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def timeline_callback(path: Path) -> Any:
    """A Ray Tune callback that writes when the driver saw each trial start, report and
    complete (Unix seconds) to ``path`` as JSON lines when the experiment ends. The Tuner
    pickles its callbacks, so the events go through a file, not this object."""
    from ray.tune import Callback

    class TuneTimeline(Callback):
        def __init__(self) -> None:
            self.events: list[tuple[str, str, float]] = []

        def on_trial_start(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
            self.events.append(("start", trial.trial_id, time.time()))

        def on_trial_result(
            self, iteration: int, trials: Any, trial: Any, result: dict[Any, Any], **info: Any
        ) -> None:
            self.events.append(("result", trial.trial_id, time.time()))

        def on_trial_complete(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
            self.events.append(("complete", trial.trial_id, time.time()))

        def on_experiment_end(self, trials: Any, **info: Any) -> None:
            path.write_text("".join(json.dumps(e) + "\n" for e in self.events))

    return TuneTimeline()


@dataclass(frozen=True)
class Transition:
    """One worker going from trial ``prev`` to trial ``next``: Unix seconds of each step."""

    work_end: float  # prev's workload returned (worker)
    run_end: float  # prev's MLflow run terminated (worker; MLflow keeps milliseconds)
    result: float  # the driver saw prev's report (Tune callback)
    complete: float  # the driver completed prev
    start: float  # the driver started next on a reused worker
    run_start: float  # next's MLflow run created (worker)
    work_start: float  # next's workload started (worker)

    STEPS = (
        (
            "MLflow after the workload (worker: metrics, tags, artifacts, end of run)",
            "work_end",
            "run_end",
        ),
        ("report reaches the driver (worker -> driver)", "run_end", "result"),
        (
            "driver: result -> trial complete (stopper, callbacks, Optuna tell)",
            "result",
            "complete",
        ),
        ("driver: complete -> next trial started (Optuna ask, actor reuse)", "complete", "start"),
        (
            "next trial's function starts, run lookup, run created (driver -> worker)",
            "start",
            "run_start",
        ),
        ("MLflow before the workload (worker: params)", "run_start", "work_start"),
    )


def transitions(runs: Sequence[Any], events_path: Path) -> list[Transition]:
    """Pair each trial's MLflow run with the next trial in the same worker process."""
    seen: dict[tuple[str, str], float] = {}
    for line in events_path.read_text().splitlines():
        kind, trial_id, at = json.loads(line)
        seen.setdefault((kind, trial_id), at)  # first time each
    by_worker: dict[int, list[Any]] = {}
    for run in runs:
        by_worker.setdefault(int(run.data.metrics["bench_pid"]), []).append(run)
    out: list[Transition] = []
    for rs in by_worker.values():
        rs.sort(key=lambda r: r.data.metrics["bench_start"])
        for a, b in itertools.pairwise(rs):
            ida, idb = a.data.tags["slimtune.trial_id"], b.data.tags["slimtune.trial_id"]
            keys = [("result", ida), ("complete", ida), ("start", idb)]
            if any(k not in seen for k in keys):
                continue
            out.append(
                Transition(
                    work_end=a.data.metrics["bench_end"],
                    run_end=a.info.end_time / 1000,
                    result=seen[keys[0]],
                    complete=seen[keys[1]],
                    start=seen[keys[2]],
                    run_start=b.info.start_time / 1000,
                    work_start=b.data.metrics["bench_start"],
                )
            )
    return out


def timeline_table(ts: Sequence[Transition]) -> list[str]:
    """Median and mean of each step of the gap between two workloads in one worker."""
    if not ts:
        return ["(no transition between two trials in one worker was seen)"]
    rows = ["| step of the gap | median (ms) | mean (ms) |", "| --- | ---: | ---: |"]
    total = [1000 * (t.work_start - t.work_end) for t in ts]
    for name, a, b in Transition.STEPS:
        ms = [1000 * (getattr(t, b) - getattr(t, a)) for t in ts]
        rows.append(f"| {name} | {statistics.median(ms):.1f} | {statistics.fmean(ms):.1f} |")
    rows.append(
        f"| **whole gap** ({len(ts)} transitions) | **{statistics.median(total):.1f}** | "
        f"**{statistics.fmean(total):.1f}** |"
    )
    return rows
