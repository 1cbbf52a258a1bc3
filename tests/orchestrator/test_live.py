"""The live-front callback without Ray: it updates MLflow, logs its cost, survives failures."""

from __future__ import annotations

import io
from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestrator._live import LiveFront, LiveFrontCallback
from tests.reports.conftest import build_store


def test_live_front_updates_logs_its_cost_and_survives_errors(tmp_path: Path) -> None:
    store = build_store(tmp_path / "store")
    live = LiveFront(store.uri, store.parent_run_id)
    live.update()
    live.update()  # nothing new: no new point
    client = MlflowClient(tracking_uri=store.uri)
    history = client.get_metric_history(store.parent_run_id, "hypervolume")
    assert sorted(m.step for m in history) == list(range(1, len(store.data)))
    live.log_cost()
    metrics = client.get_run(store.parent_run_id).data.metrics
    assert metrics["live_updates"] == 2
    assert 0 < metrics["live_update_ms_mean"] <= metrics["live_update_ms_max"]

    # A broken target (not a search run) warns once and does not raise.
    out = io.StringIO()
    cb = LiveFrontCallback(store.uri, store.child_ids[0], out=out)
    cb.on_trial_complete(0, [], None)
    cb.on_trial_complete(1, [], None)
    assert out.getvalue().count("live Pareto update failed") == 1
    assert cb.live.errors == 2


def test_select_cli_offers_exactly_the_metrics_reports_can_optimize() -> None:
    from orchestrator._select_cmd import OPTIMIZE_CHOICES
    from reports import OPTIMIZABLE

    assert sorted(OPTIMIZE_CHOICES) == sorted(OPTIMIZABLE)
