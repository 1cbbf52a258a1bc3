"""The early-stopping benchmark's arithmetic (the trials themselves are run by hand:
benchmarks/BENCHMARKS.md; `--smoke` checks that the script runs)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.early_stopping import (
    compute_to_reach,
    hv_at_compute,
    hv_curve,
    kendall_by_rung,
    main,
)

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


def _seed_raw(seed: int, reference: dict) -> dict:
    full = [
        _row("FINISHED", 10.0, 0.5, 50.0, rungs={"1": 0.4}),
        _row("FINISHED", 20.0, 0.8, 40.0, rungs={"1": 0.6}),
    ]
    asha = [_row("STOPPED", 3.0), _row("FINISHED", 9.0, 0.8, 40.0), _row("STOPPED", 12.0)]
    studies = [
        {"strategy": strategy, "seed": seed, "rows": rows}
        for strategy, rows in (("full", full), ("mo-asha", asha), ("mo-asha+skip", asha))
    ]
    return {"studies": studies, "objectives": OBJ, "reference": reference, "seconds": 60.0}


def test_combine_summarizes_runs_of_one_seed_each(tmp_path: Path, capsys) -> None:
    paths = []
    for seed in (0, 1):  # each run measured its own baseline: its own reference point
        paths.append(tmp_path / f"seed{seed}.json")
        reference = {"accuracy": 0.0, "size_bytes": 100.0 + seed}
        paths[-1].write_text(json.dumps(_seed_raw(seed, reference)))
    out = tmp_path / "combined.txt"
    assert main(["--combine", *map(str, paths), "--n", "2", "--out", str(out)]) == 0
    text = out.read_text()
    # Per seed the full study spends 20 s; MO-ASHA reaches its hypervolume at 9 s.
    assert "| mo-asha | 9 | 0.45 |" in text and "| full | 20 | 1.00 |" in text
    assert '"compute_ratio": [0.45, 0.45]' in text  # both seeds summarized


def test_combine_refuses_runs_of_different_configs(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_seed_raw(0, REF)))
    other = _seed_raw(1, REF)
    other["objectives"] = [("accuracy", "maximize"), ("latency_ms", "minimize")]
    b.write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="same config and task"):
        main(["--combine", str(a), str(b)])
