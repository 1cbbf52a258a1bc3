"""Non-dominated ranks, the hypervolume and its reference point, the notebook ``front``."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from reports import (
    REFERENCE_FACTOR,
    ReportError,
    front,
    hypervolume,
    pareto_front,
    pareto_ranks,
    reference_point,
)
from reports._pareto import hypervolume_curve

OBJ = [("accuracy", "maximize"), ("size_bytes", "minimize"), ("latency_ms", "minimize")]


def brute_ranks(values: np.ndarray, directions: list[str]) -> list[int]:
    """Non-dominated sorting by peeling fronts, written without moocore."""
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    pts = values * sign
    left = set(range(len(pts)))
    ranks = [0] * len(pts)
    level = 0
    while left:
        layer = {
            i
            for i in left
            if not any(np.all(pts[j] <= pts[i]) and np.any(pts[j] < pts[i]) for j in left)
        }
        for i in layer:
            ranks[i] = level
        left -= layer
        level += 1
    return ranks


@pytest.mark.parametrize("seed", range(5))
def test_ranks_match_brute_force_peeling(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Few distinct values so that ties and duplicates are common.
    values = rng.integers(0, 5, size=(40, 3)).astype(float)
    df = pd.DataFrame(values, columns=[m for m, _ in OBJ])
    df["status"] = "FINISHED"
    out = pareto_ranks(df, OBJ)
    assert out["pareto_rank"].tolist() == brute_ranks(values, [d for _, d in OBJ])
    assert out["pareto"].tolist() == pareto_front(df, OBJ)["pareto"].tolist()


def test_unrankable_rows_get_na_and_are_never_on_the_front() -> None:
    df = pd.DataFrame(
        {
            "accuracy": [0.9, 0.99, np.nan, 0.8],
            "size_bytes": [10.0, 1.0, 1.0, 20.0],
            "latency_ms": [1.0, 0.1, 0.1, 2.0],
            "status": ["FINISHED", "FAILED", "FINISHED", "FINISHED"],
        }
    )
    out = pareto_ranks(df, OBJ)
    assert out["pareto_rank"].tolist()[0] == 0 and out["pareto_rank"].tolist()[3] == 1
    assert out["pareto_rank"].isna().tolist() == [False, True, True, False]
    assert out["pareto"].tolist() == [True, False, False, False]


def test_reference_point_comes_from_the_baseline_only() -> None:
    base = {"accuracy": 0.98, "size_bytes": 1000.0, "latency_ms": 2.0}
    assert reference_point(base, OBJ) == {
        "accuracy": 0.0,
        "size_bytes": REFERENCE_FACTOR * 1000.0,
        "latency_ms": REFERENCE_FACTOR * 2.0,
    }
    with pytest.raises(ReportError, match=r"baseline_latency_ms"):
        reference_point({"accuracy": 0.98, "size_bytes": 1000.0}, OBJ)


def test_hypervolume_by_hand() -> None:
    ref = {"accuracy": 0.0, "size_bytes": 100.0}
    obj = OBJ[:2]
    # One point: accuracy 0.5, size 50 -> box 0.5 x (1 - 0.5) = 0.25 of the unit box.
    one = pd.DataFrame({"accuracy": [0.5], "size_bytes": [50.0]})
    assert hypervolume(one, obj, ref) == pytest.approx(0.25)
    # Add (0.8, 80): union of [0,0.5]x[0.5,1] and [0,0.8]x[0.8,1] = 0.25 + 0.3 * 0.2 = 0.31.
    two = pd.DataFrame({"accuracy": [0.5, 0.8], "size_bytes": [50.0, 80.0]})
    assert hypervolume(two, obj, ref) == pytest.approx(0.31)
    # A trial beyond the reference (size 150 > 100) adds nothing; an empty set has 0.
    worse = pd.concat([two, pd.DataFrame({"accuracy": [0.99], "size_bytes": [150.0]})])
    assert hypervolume(worse, obj, ref) == pytest.approx(0.31)
    assert hypervolume(one.iloc[:0], obj, ref) == 0.0
    with pytest.raises(ReportError, match="reference point needs a value"):
        hypervolume(one, obj, {"accuracy": 0.0})


def test_hypervolume_curve_never_decreases_and_ends_at_the_total() -> None:
    rng = np.random.default_rng(0)
    n = 30
    df = pd.DataFrame(
        {
            "accuracy": rng.uniform(0.5, 1.0, n),
            "size_bytes": rng.uniform(100, 2500, n),
            "latency_ms": rng.uniform(0.1, 5.0, n),
            "status": ["FINISHED"] * n,
            "trial_number": range(n),
            "end_time": rng.permutation(n).astype(float),
        }
    )
    ref = reference_point({"size_bytes": 1000.0, "latency_ms": 2.0}, OBJ)
    curve = hypervolume_curve(df, OBJ, ref)
    assert [k for k, _, _ in curve] == list(range(1, n + 1))
    values = [hv for _, hv, _ in curve]
    assert all(b >= a for a, b in itertools.pairwise(values))
    assert values[-1] == pytest.approx(hypervolume(df, OBJ, ref))
    # Point k covers the k trials that ended first.
    first = df.sort_values("end_time").iloc[:5]
    assert curve[4][1] == pytest.approx(hypervolume(first, OBJ, ref))
    assert curve[4][2] == int(pareto_front(first, OBJ)["pareto"].sum())


def test_front_helper_returns_rank_zero_rows_best_first() -> None:
    df = pd.DataFrame(
        {
            "trial_number": [0, 1, 2, 3],
            "accuracy": [0.9, 0.95, 0.8, 0.97],
            "size_bytes": [10.0, 20.0, 30.0, 40.0],
            "latency_ms": [1.0, 1.0, 1.0, 1.0],
        }
    )
    f = front(df, OBJ)
    assert f["trial_number"].tolist() == [3, 1, 0]
    assert (f["pareto_rank"] == 0).all()
    assert "pareto" not in df.columns  # the input is not modified
