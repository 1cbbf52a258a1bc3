"""select() and Constraints: feasibility, tie-breaking, and what it says when nothing fits."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from reports import Constraints, NoFeasibleTrial, Selection, select
from searchspace import ConfigError, SlimtuneError


def _trials() -> pd.DataFrame:
    rows = [
        # trial_number, status, accuracy, size_bytes, latency_ms
        (0, "FINISHED", 0.980, 480_000, 2.40),
        (1, "FINISHED", 0.970, 125_000, 1.10),
        (2, "FINISHED", 0.970, 125_000, 0.90),  # ties 1 on accuracy, faster
        (3, "FINISHED", 0.970, 100_000, 0.90),  # ties 2 on accuracy and latency, smaller
        (4, "FINISHED", 0.940, 60_000, 1.05),
        (5, "FAILED", 0.999, 1_000, 0.10),  # never chosen
        (6, "FINISHED", 0.900, 2_000, 3.00),
        (7, "RUNNING", 0.999, 1_000, 0.10),  # never chosen
        (8, "FINISHED", np.nan, 1_000, 0.10),  # no accuracy: never chosen
    ]
    df = pd.DataFrame(
        rows, columns=["trial_number", "status", "accuracy", "size_bytes", "latency_ms"]
    )
    df["run_id"] = [f"run{i}" for i in df["trial_number"]]
    return df


def test_unconstrained_picks_most_accurate_finished_trial() -> None:
    sel = select(_trials(), Constraints())
    assert isinstance(sel, Selection)
    assert sel.chosen["trial_number"] == 0
    assert sel.feasible == 6
    assert sel.considered == 6


def test_ties_go_to_lower_latency_then_smaller_size() -> None:
    sel = select(_trials(), Constraints(min_accuracy=0.95, max_latency_ms=2.0))
    assert sel.chosen["trial_number"] == 3
    assert sel.runners_up["trial_number"].tolist() == [2, 1]
    assert sel.feasible == 3
    assert "Ties on accuracy" in sel.reason


def test_runners_up_are_at_most_three() -> None:
    sel = select(_trials(), Constraints(max_latency_ms=5))
    assert sel.chosen["trial_number"] == 0
    assert sel.runners_up["trial_number"].tolist() == [3, 2, 1]


def test_size_is_the_onnx_file_in_decimal_kilobytes() -> None:
    df = _trials()
    # 60_000 bytes is exactly 60 KB: the bound is inclusive.
    assert select(df, Constraints(max_size_kb=60)).chosen["trial_number"] == 4
    df.loc[df["trial_number"] == 4, "size_bytes"] = 60_001
    assert select(df, Constraints(max_size_kb=60)).chosen["trial_number"] == 6


def test_no_feasible_trial_names_the_worst_constraint_and_the_closest_trial() -> None:
    cons = Constraints(min_accuracy=0.975, max_size_kb=130, max_latency_ms=1.0)
    with pytest.raises(NoFeasibleTrial) as info:
        select(_trials(), cons)
    err = info.value
    assert isinstance(err, SlimtuneError)
    # Finished trials with an accuracy: 0, 1, 2, 3, 4, 6.
    assert err.considered == 6
    assert err.excluded == {"min_accuracy": 5, "max_size_kb": 1, "max_latency_ms": 4}
    assert err.most_excluding == "min_accuracy"
    # Total normalized violation: trials 2 and 3 miss only accuracy, by 0.005 / 0.975; trial 1
    # also misses latency by 10%. Between 2 and 3 the tie goes as in select: 3 is smaller.
    assert err.closest is not None
    assert err.closest["trial_number"] == 3
    assert math.isclose(err.violations["min_accuracy"], 0.005 / 0.975)
    assert err.violations["max_size_kb"] == 0.0
    msg = str(err)
    assert "min_accuracy excludes the most" in msg
    assert "min_accuracy 5 of 6, max_size_kb 1 of 6, max_latency_ms 4 of 6" in msg
    assert "Closest: trial 3 (run run3)" in msg
    assert "misses min_accuracy by 0.005" in msg
    assert "Fix:" in msg


def test_no_finished_trial_at_all() -> None:
    df = _trials()
    df["status"] = "FAILED"
    with pytest.raises(NoFeasibleTrial, match="no finished trial") as info:
        select(df, Constraints(min_accuracy=0.5))
    assert info.value.closest is None
    assert info.value.considered == 0


def test_select_names_missing_columns() -> None:
    with pytest.raises(SlimtuneError, match="latency_ms"):
        select(pd.DataFrame({"accuracy": [0.9], "size_bytes": [1.0]}), Constraints())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_accuracy": 97}, "give accuracy as a fraction, e.g. 0.97"),
        ({"min_accuracy": -0.1}, "fraction in \\[0, 1\\]"),
        ({"max_size_kb": 0}, "positive number of kilobytes \\(1 KB = 1000 bytes\\)"),
        ({"max_latency_ms": -2.0}, "positive number of milliseconds"),
        ({"max_latency_ms": float("nan")}, "finite number"),
        ({"min_accuracy": True}, "must be a number"),
        ({"max_size_kb": "500"}, "must be a number"),
    ],
)
def test_constraints_reject_invalid_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        Constraints(**kwargs)  # type: ignore[arg-type]
    field = next(iter(kwargs))
    assert f"'{field}'" in str(info.value)


def test_constraints_accept_bounds() -> None:
    assert Constraints(min_accuracy=1.0).active() == {"min_accuracy": 1.0}
    assert Constraints(min_accuracy=0, max_size_kb=1, max_latency_ms=0.5).describe() == (
        "min_accuracy >= 0, max_size_kb <= 1, max_latency_ms <= 0.5"
    )
