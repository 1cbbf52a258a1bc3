"""pareto_mask / pareto_front / parse_objectives against an independent brute-force check."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from reports import ReportError, pareto_front, pareto_mask, parse_objectives
from searchspace import SlimtuneError

Brute = Callable[[list[list[float]], list[str]], list[bool]]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("n", [1, 7, 60])
@pytest.mark.parametrize("discrete", [False, True])
def test_mask_matches_brute_force(
    seed: int, m: int, n: int, discrete: bool, brute_dominated: Brute
) -> None:
    rng = np.random.default_rng(seed * 100 + m * 10 + n)
    # Discrete values make many ties and exact duplicates.
    values = rng.integers(0, 4, size=(n, m)).astype(float) if discrete else rng.random((n, m))
    if n > 2 and not discrete:
        values[1] = values[0]  # an exact duplicate in continuous data too
    directions = [str(d) for d in rng.choice(["maximize", "minimize"], size=m)]
    expected = [not d for d in brute_dominated(values.tolist(), directions)]
    mask = pareto_mask(values, directions)
    assert mask.dtype == bool
    assert mask.tolist() == expected


def test_hand_made_cases() -> None:
    # accuracy (max) vs size (min)
    values = np.array([[0.9, 100.0], [0.95, 200.0], [0.85, 150.0], [0.95, 300.0], [0.9, 100.0]])
    mask = pareto_mask(values, ["maximize", "minimize"])
    # row 2 is beaten by row 0; row 3 by row 1; rows 0 and 4 are duplicates: both on the front.
    assert mask.tolist() == [True, True, False, False, True]
    # Same data, both minimized: the lowest accuracy now wins.
    assert pareto_mask(values, ["minimize", "minimize"]).tolist() == [
        True,
        False,
        True,
        False,
        True,
    ]
    # One objective: every copy of the best value.
    assert pareto_mask(np.array([[3.0], [1.0], [3.0]]), ["maximize"]).tolist() == [
        True,
        False,
        True,
    ]
    assert pareto_mask(np.zeros((0, 2)), ["maximize", "minimize"]).tolist() == []


@pytest.mark.parametrize(
    ("values", "directions", "match"),
    [
        (np.zeros(3), ["maximize"], "2-D array"),
        (np.zeros((3, 2)), ["maximize"], "2 column"),
        (np.zeros((3, 2)), ["maximize", "up"], "'up'"),
        (np.zeros((3, 1)), "maximize", "string"),
        (np.array([[1.0, np.nan]]), ["maximize", "minimize"], "finite"),
    ],
)
def test_mask_rejects_bad_input(values: np.ndarray, directions: list[str], match: str) -> None:
    with pytest.raises(ReportError, match=match):
        pareto_mask(values, directions)


def test_parse_objectives() -> None:
    assert parse_objectives("accuracy:maximize,size_gzip_bytes:minimize,latency_ms:minimize") == [
        ("accuracy", "maximize"),
        ("size_gzip_bytes", "minimize"),
        ("latency_ms", "minimize"),
    ]
    assert parse_objectives(" accuracy : maximize ") == [("accuracy", "maximize")]
    for bad in ["", "accuracy", "accuracy:max", "accuracy:maximize,accuracy:maximize", ":min"]:
        with pytest.raises(SlimtuneError, match="objectives tag"):
            parse_objectives(bad)


def test_front_skips_missing_values_and_unfinished_trials() -> None:
    df = pd.DataFrame(
        {
            "accuracy": [0.90, 0.99, 0.80, np.nan, 0.95],
            "latency_ms": [1.0, 0.5, 2.0, 0.1, np.nan],
            "status": ["FINISHED", "FAILED", "FINISHED", "FINISHED", "FINISHED"],
        }
    )
    out = pareto_front(df, [("accuracy", "maximize"), ("latency_ms", "minimize")])
    # Row 1 would dominate but FAILED; rows 3 and 4 miss a value; row 2 is beaten by row 0.
    assert out["pareto"].tolist() == [True, False, False, False, False]
    assert out["pareto"].dtype == bool
    assert "pareto" not in df.columns  # a copy


def test_front_names_a_missing_column() -> None:
    df = pd.DataFrame({"accuracy": [0.9]})
    with pytest.raises(ReportError, match=r"missing \['latency_ms'\]"):
        pareto_front(df, [("accuracy", "maximize"), ("latency_ms", "minimize")])
