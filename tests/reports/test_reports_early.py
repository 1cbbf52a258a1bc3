"""Trials stopped early (issue 13) are kept apart in the report, with the compute they saved."""

from __future__ import annotations

import pandas as pd
import pytest

from reports._early import StoppedTrials, stopped_mask


def test_stopped_trials_are_counted_apart_with_the_compute_they_saved() -> None:
    trials = pd.DataFrame(
        {
            "status": ["FINISHED", "FINISHED", "KILLED", "KILLED", "FAILED"],
            "early_stopped": [None, None, "true", "true", None],
            "stopped_at_epoch": [None, None, "1", "0", None],
            "epochs": ["9", "9", "9", "9", "9"],
            "train_seconds": [9.0, 18.0, 1.0, 0.0, None],
            "trial_seconds": [10.0, 20.0, 2.5, 0.5, 1.0],
        }
    )
    assert stopped_mask(trials).tolist() == [False, False, True, True, False]
    stopped = StoppedTrials.of(trials)
    # 1.5 s per epoch on the finished trials; 8 + 9 epochs not trained.
    assert stopped.count == 2 and stopped.by_epoch == {0: 1, 1: 1}
    assert stopped.saved == pytest.approx(17 * 1.5)
    assert stopped.spent == pytest.approx(3.0)
    assert "2 trials were stopped early (1 at epoch 0, 1 at epoch 1" in stopped.html()
    assert StoppedTrials.of(trials.iloc[:2]).html() == "<p>No trial was stopped early.</p>"
    assert stopped_mask(pd.DataFrame({"status": ["FINISHED"]})).tolist() == [False]
