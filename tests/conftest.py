"""Process-wide settings every test needs, set before mlflow or ray is imported."""

import os
import signal

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

# The tests of Ctrl-C need it delivered. A suite started in the background by a shell
# (`cmd &` without job control) inherits SIGINT ignored, and so would every search the tests
# start: an ignored disposition survives exec, and Python then installs no KeyboardInterrupt.
# A handler (not an ignore) is reset by exec, so the searches get Python's default again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import math
from collections.abc import Callable, Mapping, Sequence

import pytest

# The default objectives of a search: (metric, +1 to maximize / -1 to minimize).
DEFAULT_OBJECTIVES = (("accuracy", 1.0), ("size_gzip_bytes", -1.0), ("latency_ms", -1.0))


def replicate_floor(
    trials: Mapping[str, Mapping[str, float]], formats: Mapping[str, str], metric: str
) -> float:
    """docs/noise.md's replicate spread, written out again: the 90 % quantile (linear
    interpolation) of |a - b| / max(a, b) over pairs of trials with the same format and
    size_bytes; 0 with fewer than 2 pairs."""
    groups: dict[tuple[str, float], list[float]] = {}
    for i, m in trials.items():
        value, size = m.get(metric), m.get("size_bytes")
        noisy = m.get("latency_median_cv") is not None
        if i in formats and value is not None and size is not None and value > 0 and noisy:
            groups.setdefault((formats[i], size), []).append(value)
    diffs = sorted(
        abs(v[x] - v[y]) / max(v[x], v[y])
        for v in groups.values()
        for x in range(len(v))
        for y in range(x + 1, len(v))
    )
    if len(diffs) < 2:
        return 0.0
    pos = 0.9 * (len(diffs) - 1)
    low = int(pos)
    high = min(low + 1, len(diffs) - 1)
    return diffs[low] + (diffs[high] - diffs[low]) * (pos - low)


def _tolerance(
    a: Mapping[str, float], b: Mapping[str, float], metric: str, floor: float = 0.0
) -> float:
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
        if all(t.get("latency_median_cv") is not None for t in (a, b)):
            total = max(total, floor * max(abs(a[metric]), abs(b[metric])))
        return total
    return 0.0


def noise_dominates(
    a: Mapping[str, float],
    b: Mapping[str, float],
    objectives: Sequence[tuple[str, float]] = DEFAULT_OBJECTIVES,
    floors: Mapping[str, float] | None = None,
) -> bool:
    """Whether trial ``a`` (its metrics) dominates ``b`` under the auto tolerances
    (``floors``: the replicate spread per latency metric)."""
    gains = []
    for metric, sign in objectives:
        tol = _tolerance(a, b, metric, (floors or {}).get(metric, 0.0))
        tol = tol * (1 + 1e-9) + 1e-9 * max(abs(a[metric]), abs(b[metric]))
        gains.append((sign * (a[metric] - b[metric]), tol))
    return all(g >= -t for g, t in gains) and any(g > t for g, t in gains)


def noise_ranks_by_peeling(
    trials: Mapping[str, Mapping[str, float]],
    objectives: Sequence[tuple[str, float]] = DEFAULT_OBJECTIVES,
    formats: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """Pareto rank of each trial (id -> metrics; ``formats``: id -> its artifact's format, for
    the replicate spread) under noise-aware dominance, by brute force: peel the trials no
    remaining trial dominates, one front at a time."""
    latencies = [m for m, _ in objectives if m.startswith("latency")]
    floors = {m: replicate_floor(trials, formats or {}, m) for m in latencies}
    left, rank, level = set(trials), {}, 0
    while left:
        layer = {
            i
            for i in left
            if not any(
                noise_dominates(trials[j], trials[i], objectives, floors) for j in left if j != i
            )
        }
        layer = layer or set(left)  # a cycle of dominance: the rest share a rank
        rank.update(dict.fromkeys(layer, level))
        left -= layer
        level += 1
    return rank


@pytest.fixture
def noise_ranks() -> Callable[..., dict[str, int]]:
    return noise_ranks_by_peeling
