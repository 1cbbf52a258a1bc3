"""Do a search's latencies hold? Time its trials' ONNX files again on a quiet machine.

After a search ran (trials training beside the meter, under some ``latency.isolation``), this
times the same files again, one at a time, with nothing else running, the way the meter did
(ONNX Runtime, batch 1, the config's threads, warm-up and repeats), and compares each recorded
median with the quiet one. Used by ``benchmarks/gpu_packing.py`` (issue 14: within 3 %).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from mlflow.entities import Run

TARGET = 0.03


@dataclass(frozen=True)
class Checked:
    """One trial's file: the median the search recorded, the quiet one, and how the search's
    measurement went (converged, extra measurements, CV of single runs)."""

    trial: str
    recorded_ms: float
    quiet_ms: float
    converged: str = "?"
    remeasured: float = float("nan")
    cv: float = float("nan")

    @property
    def ratio(self) -> float:
        return self.recorded_ms / self.quiet_ms

    def line(self) -> str:
        return (
            f"trial {self.trial}: recorded {self.recorded_ms:.4f} ms, quiet "
            f"{self.quiet_ms:.4f} ms ({self.ratio:.3f}); search's measurement: converged "
            f"{self.converged}, remeasured {self.remeasured:.0f}, CV {self.cv:.3f}"
        )


@dataclass(frozen=True)
class QuietCheck:
    """The trials checked; per trial, recorded median / quiet median (1.0: the search's figure
    held)."""

    trials: tuple[Checked, ...]

    @classmethod
    def of_ratios(cls, ratios: list[float]) -> QuietCheck:
        """A check known only by its ratios (recorded ``r`` ms against a quiet 1 ms)."""
        return cls(tuple(Checked(str(i), r, 1.0) for i, r in enumerate(ratios)))

    @property
    def ratios(self) -> list[float]:
        return [c.ratio for c in self.trials]

    @property
    def median(self) -> float:
        return statistics.median(self.ratios) if self.ratios else float("nan")

    @property
    def worst(self) -> float:
        """The largest |ratio - 1|."""
        return max((abs(r - 1) for r in self.ratios), default=float("nan"))

    @property
    def within(self) -> float:
        """The share of trials within ``TARGET`` of the quiet median."""
        if not self.ratios:
            return float("nan")
        return sum(abs(r - 1) <= TARGET for r in self.ratios) / len(self.ratios)

    def line(self) -> str:
        if not self.ratios:
            return "no trial checked"
        verdict = "MET" if abs(self.median - 1) <= TARGET else "MISSED"
        return (
            f"{len(self.ratios)} trials: median recorded/quiet {self.median:.3f}, worst "
            f"|dev| {self.worst:.1%}, {self.within:.0%} within {TARGET:.0%} -> {verdict}"
        )


def onnx_file(run: Run) -> Path:
    """The trial's logged ONNX file (a local artifact store)."""
    return Path(unquote(urlparse(run.info.artifact_uri).path)) / "model" / "model.onnx"


def quiet_check(
    runs: list[Run], *, task_ref: str, threads: int, warmup: int, repeats: int, limit: int
) -> QuietCheck:
    """Time the ONNX files of up to ``limit`` of ``runs`` (those with a latency and a file) on
    this machine, now, and compare each with the median the search recorded."""
    from trials import LatencyPlan, LatencySession, load_task

    example = load_task(task_ref).example_input().float().numpy()
    plan = LatencyPlan(warmup=warmup, repeats=repeats, threads=threads)
    checked: list[Checked] = []
    for run in runs:
        if len(checked) >= limit:
            break
        path = onnx_file(run)
        metrics = run.data.metrics
        recorded = metrics.get("latency_ms")
        if recorded is None or not path.is_file():
            continue
        stats = LatencySession(path, threads=threads).time(example, plan)
        checked.append(
            Checked(
                run.data.tags.get("slimtune.trial_number", run.info.run_name or "?"),
                recorded,
                stats.median_ms,
                run.data.tags.get("latency_converged", "?"),
                metrics.get("latency_remeasured", float("nan")),
                metrics.get("latency_cv", float("nan")),
            )
        )
    return QuietCheck(tuple(checked))
