"""What a search cost: the reserved CPU and GPU seconds of its trials, and its wall time."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reports._mlflow import SearchRuns


@dataclass(frozen=True)
class SearchCost:
    """What the search cost: reserved core-seconds and GPU-seconds of its trials.

    ``cpu_seconds`` = sum over trials of ``trial_seconds`` x CPUs reserved per trial
    (``resources.cpu``, 1 if the search did not log it); ``gpu_seconds`` likewise with
    ``resources.gpu`` (0 if not logged). ``wall_seconds`` is the parent's ``search_seconds``
    (NaN while running).
    """

    trials_with_time: int
    trial_seconds: float
    cpu_per_trial: float
    gpu_per_trial: float
    cpu_seconds: float
    gpu_seconds: float
    wall_seconds: float


def search_cost(search: SearchRuns) -> SearchCost:
    """The cost of ``search`` from its trials' ``trial_seconds`` and its reserved resources."""
    seconds = pd.to_numeric(
        search.trials.get("trial_seconds", pd.Series(dtype=float)), errors="coerce"
    ).dropna()
    cpu = _float(search.parent_params.get("resources.cpu"), 1.0)
    gpu = _float(search.parent_params.get("resources.gpu"), 0.0)
    total = float(seconds.sum())
    return SearchCost(
        trials_with_time=len(seconds),
        trial_seconds=total,
        cpu_per_trial=cpu,
        gpu_per_trial=gpu,
        cpu_seconds=total * cpu,
        gpu_seconds=total * gpu,
        wall_seconds=search.parent_metrics.get("search_seconds", math.nan),
    )


def cost_html(cost: SearchCost) -> str:
    wall = f"{cost.wall_seconds:.0f} s" if math.isfinite(cost.wall_seconds) else "n/a"
    return (
        "<table>"
        f"<tr><td class='l'>trials with a recorded time</td><td>{cost.trials_with_time}</td></tr>"
        f"<tr><td class='l'>sum of trial_seconds</td><td>{cost.trial_seconds:.1f}</td></tr>"
        f"<tr><td class='l'>CPUs / GPUs reserved per trial</td><td>{cost.cpu_per_trial:g} / "
        f"{cost.gpu_per_trial:g}</td></tr>"
        f"<tr><td class='l'><b>CPU seconds</b> (trial_seconds x CPUs)</td>"
        f"<td><b>{cost.cpu_seconds:.1f}</b></td></tr>"
        f"<tr><td class='l'><b>GPU seconds</b> (trial_seconds x GPUs)</td>"
        f"<td><b>{cost.gpu_seconds:.1f}</b></td></tr>"
        f"<tr><td class='l'>wall time of the whole search</td><td>{wall}</td></tr>"
        "</table><p class='muted'>trial_seconds is each trial's own work (fine-tuning, "
        "export, measurement); the dense baseline, Ray start-up and MLflow writes are in the "
        "wall time only. Failed trials log no time.</p>"
    )


def _float(text: str | None, default: float) -> float:
    try:
        value = float(text) if text is not None else default
    except ValueError:
        return default
    return value if np.isfinite(value) else default
