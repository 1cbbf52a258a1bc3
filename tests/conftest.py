"""Process-wide settings every test needs, set before mlflow or ray is imported."""

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import math
from collections.abc import Callable, Mapping, Sequence

import pytest

# The default objectives of a search: (metric, +1 to maximize / -1 to minimize).
DEFAULT_OBJECTIVES = (("accuracy", 1.0), ("size_gzip_bytes", -1.0), ("latency_ms", -1.0))


def _tolerance(a: Mapping[str, float], b: Mapping[str, float], metric: str) -> float:
    """docs/noise.md's `auto` rule, written out again without the reports package."""
    if metric == "accuracy":
        n = [float(t.get("val_samples") or 0) for t in (a, b)]
        return 1 / min(n) if min(n) > 0 else 0.0
    if metric.startswith("latency"):
        total = 0.0
        for t in (a, b):
            cv = t.get("latency_median_cv")
            if cv is None:
                continue
            total += 2 * cv * t[metric] / math.sqrt(t.get("latency_blocks") or 5)
        return total
    return 0.0


def noise_dominates(
    a: Mapping[str, float],
    b: Mapping[str, float],
    objectives: Sequence[tuple[str, float]] = DEFAULT_OBJECTIVES,
) -> bool:
    """Whether trial ``a`` (its metrics) dominates ``b`` under the auto tolerances."""
    gains = []
    for metric, sign in objectives:
        tol = _tolerance(a, b, metric) * (1 + 1e-9) + 1e-9 * max(abs(a[metric]), abs(b[metric]))
        gains.append((sign * (a[metric] - b[metric]), tol))
    return all(g >= -t for g, t in gains) and any(g > t for g, t in gains)


def noise_ranks_by_peeling(
    trials: Mapping[str, Mapping[str, float]],
    objectives: Sequence[tuple[str, float]] = DEFAULT_OBJECTIVES,
) -> dict[str, int]:
    """Pareto rank of each trial (id -> metrics) under noise-aware dominance, by brute force:
    peel the trials no remaining trial dominates, one front at a time."""
    left, rank, level = set(trials), {}, 0
    while left:
        layer = {
            i
            for i in left
            if not any(noise_dominates(trials[j], trials[i], objectives) for j in left if j != i)
        }
        layer = layer or set(left)  # a cycle of dominance: the rest share a rank
        rank.update(dict.fromkeys(layer, level))
        left -= layer
        level += 1
    return rank


@pytest.fixture
def noise_ranks() -> Callable[..., dict[str, int]]:
    return noise_ranks_by_peeling
