"""One tiny real search with MO-ASHA (issue 13): real Ray, MLflow SQLite, ONNX Runtime.

Four trials of 2 epochs, rung at epoch 1 with eta 3, skip_dominated on: of the first three to
reach the rung, the second goes on only if it dominates the first, the third only if it alone is
non-dominated (see orchestrator._mo_asha), so some trials are stopped there (or before training,
as dominated)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.orchestrator.conftest import cli, small_config

pytestmark = pytest.mark.e2e

TRIALS = 4
CONFIG = small_config(
    "es",
    trials=TRIALS,
    epochs=2,
    extra="early_stopping: {name: mo-asha, min_epochs: 1, reduction_factor: 3, "
    "skip_dominated: true}",
)


def test_mo_asha_search_stops_trials_at_rungs_and_keeps_them_off_the_front(
    tmp_path: Path,
) -> None:
    (tmp_path / "c.yaml").write_text(CONFIG)
    proc = cli("search", "c.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("es")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parent = next(r for r in runs if r.data.tags.get("slimtune.role") == "search")
    children = [r for r in runs if r.data.tags.get("slimtune.role") == "trial"]
    assert len(children) == TRIALS  # one run per trial, stopped or not
    stopped = [c for c in children if c.data.tags.get("early_stopped") == "true"]
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert stopped, "mo-asha stopped no trial"
    assert finished, "mo-asha let no trial finish"
    assert len(stopped) + len(finished) == TRIALS
    assert parent.data.metrics["trials_stopped"] == len(stopped)
    assert parent.data.metrics["trials_finished"] == len(finished)
    assert f"{len(stopped)} stopped early" in proc.stdout
    assert proc.stdout.count("| stopped early at epoch ") == len(stopped)
    for c in stopped:
        assert c.info.status == "KILLED"
        # At the rung (epoch 1), or before training as dominated (epoch 0, skip_dominated).
        at = int(c.data.tags["stopped_at_epoch"])
        reason = c.data.tags["early_stop_reason"]
        expected = {1: "mo-asha: at rung epoch 1, ", 0: "skip-dominated: with an op"}
        assert reason.startswith(expected[at])
        assert "pareto" not in c.data.tags and "accuracy" not in c.data.metrics
        history = client.get_metric_history(c.info.run_id, "rung_accuracy")
        assert sorted(m.step for m in history) == list(range(at + 1))
        assert c.data.metrics["early_size_bytes"] > 0
        assert c.data.metrics["trial_seconds"] > 0
    for c in finished:
        m = c.data.metrics
        # Fixed by the structure; int8 activation zero points are varints (1 or 2 bytes each).
        drift = m["size_bytes"] - m["early_size_bytes"]
        assert m["early_size_bytes_drift"] == drift
        assert c.data.tags["early_size_bytes_match"] == str(drift == 0).lower()
        assert drift == 0 if c.data.params["bits"] == "32" else abs(drift) <= 8
        assert "pareto" in c.data.tags
        history = client.get_metric_history(c.info.run_id, "rung_accuracy")
        assert sorted(h.step for h in history) == [0, 1, 2]
    # The search's cost counts the stopped trials' seconds too.
    spent = sum(c.data.metrics["trial_seconds"] for c in children)
    assert abs(parent.data.metrics["trial_seconds_total"] - spent) < 0.05 * spent + 1.0
    # The report shows the stopped trials apart, with what they saved; they are not "failed".
    out = tmp_path / "rep"
    rep = cli("report", "es", "--out", str(out), cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    page = (out / "index.html").read_text()
    assert f"{len(stopped)} trials were stopped early (" in page
    assert f"{len(finished)} trials finished, 0 did not" in page
    # select chooses among full-fidelity trials only.
    chosen = cli("select", "es", "--min-accuracy", "0", cwd=tmp_path)
    assert chosen.returncode == 0, chosen.stderr
    numbers = {c.data.tags["slimtune.trial_number"] for c in stopped}
    assert not any(f"trial {n} " in chosen.stdout for n in numbers)
