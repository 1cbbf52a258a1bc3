"""The live-front callback without Ray: it updates MLflow, logs its cost, survives failures."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from ray import cloudpickle

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
    cb.on_trial_complete(1, [], _Ended({"mlflow_run_id": store.child_ids[1]}))
    assert out.getvalue().count("live Pareto update failed") == 1
    assert cb.live.errors == 2
    assert cb.live._ended == {store.child_ids[1]}  # kept for the next update to read


@dataclass
class _Ended:
    """What the callback reads of a Ray Tune trial that completed: its last result."""

    last_result: dict[str, Any] = field(default_factory=dict)


def test_callback_reads_only_the_runs_of_trials_that_ended(tmp_path: Path) -> None:
    store = build_store(tmp_path / "store")
    client = MlflowClient(tracking_uri=store.uri)
    cb = LiveFrontCallback(store.uri, store.parent_run_id, out=io.StringIO())
    cb = cloudpickle.loads(cloudpickle.dumps(cb))  # as the Tuner hands it over
    cb.on_trial_complete(0, [], _Ended({"mlflow_run_id": store.child_ids[0]}))
    n = len(store.data) - 1  # the store's last trial failed
    assert cb.live._tracker is not None and cb.live._tracker.last_fetched == len(store.data)
    run = client.create_run(
        store.experiment_id,
        tags={"mlflow.parentRunId": store.parent_run_id, "slimtune.trial_number": "77"},
    )
    new = run.info.run_id
    best = {"accuracy": 0.999, "size_gzip_bytes": 1.0, "latency_ms": 0.01}
    client.log_batch(new, metrics=[Metric(k, v, 0, 0) for k, v in best.items()])
    client.set_terminated(new, "FINISHED")
    cb.on_trial_complete(1, [], _Ended({"mlflow_run_id": new}))
    assert cb.live._tracker.last_fetched == 1
    assert client.get_run(new).data.tags["pareto_rank"] == "0"
    steps = sorted(m.step for m in client.get_metric_history(store.parent_run_id, "pareto_size"))
    assert steps == list(range(1, n + 2))
    cb.on_trial_complete(2, [], _Ended({}))  # a result without a run (never logged): no read
    assert cb.live._tracker.last_fetched == 0 and cb.live.errors == 0


def test_callback_saved_by_an_older_slimtune_resumes(tmp_path: Path) -> None:
    """`--resume` unpickles the callbacks a search saved when it started; one saved before
    background updates and incremental reads existed lacks their attributes."""
    store = build_store(tmp_path / "store")
    cb = LiveFrontCallback(store.uri, store.parent_run_id, out=io.StringIO(), background=True)
    old_live = {k: v for k, v in vars(cb.live).items() if k in ("tracking_uri", "parent_run_id")}
    live = LiveFront.__new__(LiveFront)
    live.__setstate__({**old_live, "out": io.StringIO()})
    old = LiveFrontCallback.__new__(LiveFrontCallback)
    old.__setstate__({"live": live})  # no `background`, no `_updates`
    old.on_trial_complete(0, [], _Ended({"mlflow_run_id": store.child_ids[0]}))
    old.on_experiment_end([])
    assert old.live.errors == 0 and len(old.live.seconds) == 1
    history = MlflowClient(tracking_uri=store.uri).get_metric_history(
        store.parent_run_id, "hypervolume"
    )
    assert sorted(m.step for m in history) == list(range(1, len(store.data)))


def test_background_updates_start_with_the_experiment(tmp_path: Path) -> None:
    """The first update (the costly one: it reads every run recorded so far) runs when the
    experiment starts, before any trial of it finished."""
    store = build_store(tmp_path / "store")
    cb = LiveFrontCallback(store.uri, store.parent_run_id, out=io.StringIO(), background=True)
    cb.setup(num_samples=4)
    cb.on_experiment_end([])  # waits for the pending update
    assert len(cb.live.seconds) == 1 and cb.live.errors == 0
    history = MlflowClient(tracking_uri=store.uri).get_metric_history(
        store.parent_run_id, "pareto_size"
    )
    assert sorted(m.step for m in history) == list(range(1, len(store.data)))


def test_select_cli_offers_exactly_the_metrics_reports_can_optimize() -> None:
    from orchestrator._select_cmd import OPTIMIZE_CHOICES
    from reports import OPTIMIZABLE

    assert sorted(OPTIMIZE_CHOICES) == sorted(OPTIMIZABLE)
