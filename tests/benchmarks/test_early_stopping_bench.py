"""The early-stopping benchmark's arithmetic (the trials themselves are run by hand:
benchmarks/BENCHMARKS.md; `--smoke` checks that the script runs)."""

from __future__ import annotations

import math

import pytest

from benchmarks.early_stopping import compute_to_reach, hv_at_compute, hv_curve, kendall_by_rung

OBJ = [("accuracy", "maximize"), ("size_bytes", "minimize")]
REF = {"accuracy": 0.0, "size_bytes": 100.0}


def _row(status: str, spent: float, acc: float = 0.0, size: float = 0.0, **extra: object) -> dict:
    return {"status": status, "spent": spent, "accuracy": acc, "size_bytes": size, **extra}


def test_hypervolume_counts_full_fidelity_trials_only_against_compute() -> None:
    rows = [
        _row("FINISHED", 10.0, 0.5, 50.0),
        _row("STOPPED", 12.0),  # adds compute, no point
        _row("FINISHED", 20.0, 0.8, 50.0),
    ]
    curve = hv_curve(rows, OBJ, REF)
    assert [s for s, _ in curve] == [10.0, 12.0, 20.0]
    assert curve[0][1] == pytest.approx(0.5 * 0.5) and curve[1][1] == curve[0][1]
    assert curve[2][1] == pytest.approx(0.8 * 0.5)
    assert compute_to_reach(curve, 0.4) == 20.0
    assert math.isnan(compute_to_reach(curve, 0.9))
    assert hv_at_compute(curve, 15.0) == pytest.approx(0.25)
    assert hv_at_compute(curve, 5.0) == 0.0


def test_rung_accuracy_predicts_final_accuracy_by_kendall_tau() -> None:
    rows = [_row("FINISHED", 1, a, 1, rungs={"1": a - 0.1, "3": a}) for a in (0.5, 0.6, 0.7, 0.8)]
    rows.append(_row("STOPPED", 1, rungs={"1": 0.9}))  # not finished: left out
    assert kendall_by_rung(rows) == {"1": pytest.approx(1.0), "3": pytest.approx(1.0)}
