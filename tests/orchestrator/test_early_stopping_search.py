"""One tiny real search with MO-ASHA (issue 13): real Ray, MLflow SQLite, ONNX Runtime.

Six trials of 3 epochs, rung at epoch 1 with eta 3: the first three to reach it cannot all go
on (see orchestrator._mo_asha), so some trials are stopped there."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.orchestrator.conftest import cli

pytestmark = pytest.mark.e2e

TRIALS = 6
CONFIG = f"""
experiment: es
task: digits
trials: {TRIALS}
concurrency: 2
space:
  lr: {{low: 1.0e-4, high: 2.0e-3, log: true}}
  batch_size: {{choices: [128]}}
  sparsity: {{low: 0.0, high: 0.8}}
  bits: {{choices: [8, 32]}}
sampler: {{name: random, seed: 3}}
training: {{epochs: 3}}
latency: {{warmup: 3, repeats: 20}}
early_stopping: {{name: mo-asha, min_epochs: 1, reduction_factor: 3}}
"""


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
    for c in stopped:
        assert c.info.status == "KILLED"
        assert c.data.tags["stopped_at_epoch"] == "1"
        assert "mo-asha: at rung epoch 1" in c.data.tags["early_stop_reason"]
        assert "pareto" not in c.data.tags and "accuracy" not in c.data.metrics
        history = client.get_metric_history(c.info.run_id, "rung_accuracy")
        assert sorted(m.step for m in history) == [0, 1]
        assert c.data.metrics["early_size_bytes"] > 0
        assert c.data.metrics["trial_seconds"] > 0
    for c in finished:
        m = c.data.metrics
        assert m["early_size_bytes"] == m["size_bytes"]  # fixed by the structure
        assert c.data.tags["early_size_bytes_match"] == "true"
        assert "pareto" in c.data.tags
        history = client.get_metric_history(c.info.run_id, "rung_accuracy")
        assert sorted(h.step for h in history) == [0, 1, 2, 3]
    # The search's cost counts the stopped trials' seconds too.
    spent = sum(c.data.metrics["trial_seconds"] for c in children)
    assert abs(parent.data.metrics["trial_seconds_total"] - spent) < 0.05 * spent + 1.0
