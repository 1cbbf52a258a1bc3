"""Ray Tune's results of a search's trials, counted: which finished, which failed, which the
search's scheduler stopped early, and their trial-seconds; the keys a trial's failed report
carries; and the stopper that ends each trial at its final report."""

from __future__ import annotations

import math
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ray.tune import Result

from orchestrator._scheduler import STOPPED_KEY, is_rung

FAILED_KEY = "trial_failed"
ERROR_KEY = "trial_error"


@dataclass(frozen=True)
class TrialCounts:
    """How many of a search's trials finished and how many failed, from Ray Tune's results.

    A trial finished when Ray ended it without an error and its last report carries every
    objective and no failure. A trial stopped early by the search's scheduler (:func:`is_stopped`)
    is neither. Anything else failed: a trial whose own work failed (it reports ``FAILED_KEY``),
    one Ray ended with an error (a trial restored by ``--resume`` that fails again keeps the
    result it reported before, objectives included), one that never reported.
    """

    finished: int
    failed: int
    stopped: int = 0  # stopped early by the search's scheduler (last report at a rung)
    seconds: float = 0.0  # the search's cost: trial-seconds of finished and stopped trials

    @classmethod
    def of(
        cls,
        results: Iterable[Result],
        metric_names: Sequence[str],
        stopped_ids: Container[str] | None = None,
    ) -> TrialCounts:
        """``stopped_ids``: the trials the search's scheduler stopped (see :func:`is_stopped`)."""
        results = list(results)
        done = [is_finished(r, metric_names) for r in results]
        stopped = [is_stopped(r, stopped_ids) for r in results]
        seconds = sum(_seconds(r.metrics or {}) for r in results)
        return cls(
            finished=sum(done),
            failed=len(done) - sum(done) - sum(stopped),
            stopped=sum(stopped),
            seconds=seconds,
        )


def _seconds(metrics: dict[str, Any]) -> float:
    value = metrics.get("trial_seconds", metrics.get("rung_seconds", 0.0))
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else 0.0


def is_stopped(result: Result, stopped_ids: Container[str] | None = None) -> bool:
    """Whether Ray's ``result`` is a trial stopped early by the search's scheduler: no error,
    its last report a rung, and, given ``stopped_ids`` (the trial ids the scheduler stopped),
    one of those or replayed as stopped by ``--resume``. With ``stopped_ids`` a trial cut off
    after a rung report (Ctrl-C) is not stopped early: it did not end, and runs again."""
    metrics = result.metrics or {}
    if result.error is not None or not is_rung(metrics):
        return False
    return (
        stopped_ids is None
        or bool(metrics.get(STOPPED_KEY))
        or str(metrics.get("trial_id", "")) in stopped_ids
    )


def is_finished(result: Result, metric_names: Sequence[str]) -> bool:
    """Whether Ray's ``result`` is a finished trial (see :class:`TrialCounts`)."""
    metrics = result.metrics or {}
    return (
        result.error is None
        and not metrics.get(FAILED_KEY)
        and all(name in metrics for name in metric_names)
    )
