"""Rung states (issue 13): a trial lost after a rung goes on from that rung, with the weights
of a trial that never stopped; a state of another trial, or a planted file, is refused."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from searchspace import TrialParams
from trials import RungReport, RungState, RungStateError, Task, TrialSettings, run_trial
from trials._rung_state import STATE_FILE, trial_identity

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")

CASES = {
    # gradual pruning: its masks and schedule history carry over the rung
    "fp32-unstructured": TrialParams(lr=1e-3, batch_size=32, sparsity=0.6, bits=32),
    # narrower layers and fake quantization on the int8 grid during fine-tuning
    "int8-structured-qat": TrialParams(
        lr=1e-3, batch_size=32, sparsity=0.5, bits=8, pruning="structured", quant_scheme="qat"
    ),
}


class _Lost(Exception):
    """The trial's node went away just after its rung."""


@pytest.mark.parametrize("case", list(CASES))
def test_a_trial_resumed_at_its_rung_ends_as_one_that_never_stopped(
    case: str,
    tiny_task: Task,
    shared_cache: Path,
    make_settings: Callable[..., TrialSettings],
    tmp_path: Path,
) -> None:
    params = CASES[case]
    whole = run_trial(
        tiny_task,
        params,
        make_settings(shared_cache, tmp_path / "whole", epochs=3),
        rungs=lambda r: None,
    )
    saved = tmp_path / "state"
    saved.mkdir()

    def lost_after_rung_one(report: RungReport) -> None:
        if report.epoch == 1:
            assert report.save is not None
            report.save(saved)
            raise _Lost

    settings = make_settings(shared_cache, tmp_path / "lost", epochs=3)
    with pytest.raises(_Lost):
        run_trial(tiny_task, params, settings, rungs=lost_after_rung_one)
    state = RungState.load(saved)
    assert state.epoch == 1

    reports: list[RungReport] = []
    retried = make_settings(shared_cache, tmp_path / "retried", epochs=3)
    resumed = run_trial(tiny_task, params, retried, rungs=reports.append, resume=state)
    # It goes on after rung 1: no second early measurement, no rung 0 or 1 again.
    assert [r.epoch for r in reports] == [2, 3]
    assert resumed.tags["resumed_at_epoch"] == "1"
    # ... and ends with exactly the weights and artifact of the trial that never stopped.
    assert resumed.lineage is not None and whole.lineage is not None
    assert resumed.lineage.weights_sha256 == whole.lineage.weights_sha256
    assert resumed.metrics["size_bytes"] == whole.metrics["size_bytes"]
    assert resumed.metrics["accuracy"] == whole.metrics["accuracy"]
    assert resumed.metrics["early_size_bytes"] == whole.metrics["early_size_bytes"]
    assert resumed.tags["early_size_bytes_match"] == "true"
    # Its rung seconds count the time before the loss too.
    assert reports[0].seconds > state.seconds


def test_a_state_of_another_trial_is_refused(
    tiny_task: Task,
    shared_cache: Path,
    make_settings: Callable[..., TrialSettings],
    tmp_path: Path,
) -> None:
    params = CASES["fp32-unstructured"]
    saved = tmp_path / "state"
    saved.mkdir()

    def save_at_one(report: RungReport) -> None:
        if report.epoch == 1 and report.save is not None:
            report.save(saved)

    settings = make_settings(shared_cache, tmp_path / "a", epochs=2)
    run_trial(tiny_task, params, settings, rungs=save_at_one)
    state = RungState.load(saved)
    other = TrialParams(lr=5e-4, batch_size=32, sparsity=0.6, bits=32)
    with pytest.raises(RungStateError, match=r"differs in \['params'\]"):
        state.check_for(trial_identity(other, settings), settings.epochs)
    with pytest.raises(RungStateError, match="epoch must be in"):
        state.check_for(trial_identity(params, settings), 1)
    state.check_for(trial_identity(params, settings), settings.epochs)  # its own: accepted
    with pytest.raises(ValueError, match="needs rungs"):
        run_trial(tiny_task, params, settings, resume=state)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (Path.touch, (self.marker,))


def test_a_planted_state_file_runs_no_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / STATE_FILE).write_bytes(pickle.dumps({"format": 1, "x": _Payload(marker)}))
    with pytest.raises(RungStateError, match="cannot be read"):
        RungState.load(tmp_path)
    assert not marker.exists()
    torch.save({"format": 99}, tmp_path / STATE_FILE)
    with pytest.raises(RungStateError, match="format 99"):
        RungState.load(tmp_path)
