"""Measure first (issue 13): the untrained compressed artifact measured like the final one, rung
reports after every epoch, the same trained weights with or without them, and a stop."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from searchspace import TrialParams
from trials import RungReport, Task, TrialSettings, run_trial

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")

CASES = {
    "fp32-unstructured": TrialParams(lr=1e-3, batch_size=32, sparsity=0.6, bits=32),
    "int8-structured-ptq": TrialParams(
        lr=1e-3, batch_size=32, sparsity=0.5, bits=8, pruning="structured", quant_scheme="ptq"
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_early_measurement_matches_final_and_keeps_weights(
    case: str,
    tiny_task: Task,
    shared_cache: Path,
    make_settings: Callable[..., TrialSettings],
    tmp_path: Path,
) -> None:
    params = CASES[case]
    plain = run_trial(tiny_task, params, make_settings(shared_cache, tmp_path / "plain"))
    reports: list[RungReport] = []
    early = run_trial(
        tiny_task, params, make_settings(shared_cache, tmp_path / "early"), rungs=reports.append
    )
    # The trained artifact is the same as without early measurement.
    assert early.lineage is not None and plain.lineage is not None
    assert early.lineage.weights_sha256 == plain.lineage.weights_sha256
    assert early.metrics["size_bytes"] == plain.metrics["size_bytes"]
    assert early.metrics["size_gzip_bytes"] == plain.metrics["size_gzip_bytes"]
    # Rung 0 before training, then one per epoch (settings: 2 epochs).
    assert [r.epoch for r in reports] == [0, 1, 2]
    # Size is fixed by the structure: the early file has exactly the final file's bytes.
    assert early.metrics["early_size_bytes"] == early.metrics["size_bytes"]
    assert early.tags["early_size_bytes_match"] == "true"
    assert early.metrics["early_size_bytes_drift"] == 0
    for name in ("size_gzip_bytes", "latency_ms", "accuracy"):
        assert f"early_{name}" in early.metrics
    assert all(r.metrics["size_bytes"] == early.metrics["size_bytes"] for r in reports)
    assert reports[0].metrics["accuracy"] == early.metrics["early_accuracy"]
    assert all(0.0 <= r.metrics["accuracy"] <= 1.0 for r in reports)
    assert reports[-1].metrics["torch_accuracy"] == pytest.approx(
        early.metrics["torch_accuracy"], abs=1e-9
    )
    assert reports[0].val_samples > 0
    assert {r.val_samples for r in reports} == {reports[0].val_samples}
    assert not (tmp_path / "early" / "model.early.onnx").exists()


class _Stop(Exception):
    pass


def test_a_rung_reporter_can_stop_the_trial(
    tiny_task: Task,
    shared_cache: Path,
    make_settings: Callable[..., TrialSettings],
    tmp_path: Path,
) -> None:
    seen: list[int] = []

    def stop_at_one(report: RungReport) -> None:
        seen.append(report.epoch)
        if report.epoch == 1:
            raise _Stop

    settings = make_settings(shared_cache, tmp_path, epochs=3)
    with pytest.raises(_Stop):
        run_trial(tiny_task, CASES["fp32-unstructured"], settings, rungs=stop_at_one)
    assert seen == [0, 1]
    assert not (tmp_path / "model.onnx").exists()
