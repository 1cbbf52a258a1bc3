"""What keeps a search's per-trial overhead low, against a real MLflow SQLite store (no Ray
cluster): the live front updated in the background, the store in WAL mode, one run lookup per
trial, the trial body seam and stopping a trial at its single report."""

from __future__ import annotations

import io
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from ray import cloudpickle

from orchestrator._live import Coalesced, LiveFrontCallback
from orchestrator._searcher import TRIAL_NUMBER_KEY
from orchestrator._tracking import (
    TrackingTarget,
    find_trial_run,
    open_experiment,
    resolve_tracking_uri,
    start_trial_run,
    use_wal,
)
from orchestrator._trainable import EndAtReport, TrialContext, make_trainable
from searchspace import TrialParams, parse_spec
from tests.reports.conftest import build_store
from trials import Task, TrialResult, TrialSettings


def test_coalesced_serves_requests_made_while_busy_with_one_more_run() -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[float] = []

    def fn() -> None:
        calls.append(time.monotonic())
        started.set()
        release.wait(10)

    worker = Coalesced(fn, name="test")
    worker.request()
    assert started.wait(10)
    for _ in range(3):  # while the first run is busy
        worker.request()
    release.set()
    worker.close(timeout_s=10)
    assert len(calls) == 2 and worker.runs == 2


def test_coalesced_close_serves_a_pending_request_without_its_delay() -> None:
    calls: list[int] = []
    worker = Coalesced(lambda: calls.append(1), name="test", delay_s=60.0)
    idle = Coalesced(lambda: calls.append(2), name="idle", delay_s=60.0)
    start = time.monotonic()
    worker.request()
    worker.close(timeout_s=10)
    idle.close(timeout_s=10)  # never requested: never runs
    assert calls == [1]
    assert time.monotonic() - start < 10


def test_coalesced_spaces_runs_to_keep_within_its_share() -> None:
    starts: list[float] = []
    done = threading.Semaphore(0)

    def fn() -> None:
        starts.append(time.monotonic())
        time.sleep(0.05)
        done.release()

    worker = Coalesced(fn, name="test", max_share=0.25)  # a 50 ms run, then >= 150 ms of rest
    for _ in range(2):
        worker.request()
        assert done.acquire(timeout=10)
    worker.close(timeout_s=10)
    assert len(starts) == 2 and starts[1] - starts[0] >= 0.199, starts
    with pytest.raises(ValueError, match="max_share"):
        Coalesced(fn, name="bad", max_share=0.0)


def test_background_live_front_records_every_step_and_pickles(tmp_path: Path) -> None:
    store = build_store(tmp_path / "store")
    cb = LiveFrontCallback(store.uri, store.parent_run_id, out=io.StringIO(), background=True)
    cloudpickle.dumps(cb)  # the Tuner pickles its callbacks when it is made
    cb.on_trial_complete(0, [], None)
    cb.on_trial_complete(1, [], None)
    cloudpickle.dumps(cb)  # also with its thread running
    cb.on_experiment_end([])
    client = MlflowClient(tracking_uri=store.uri)
    history = client.get_metric_history(store.parent_run_id, "hypervolume")
    # Backfilled: a point per finished trial, however many updates served the two requests.
    assert sorted(m.step for m in history) == list(range(1, len(store.data)))
    metrics = client.get_run(store.parent_run_id).data.metrics
    assert 1 <= metrics["live_updates"] <= 2


def test_use_wal_switches_a_local_sqlite_store_and_leaves_others(tmp_path: Path) -> None:
    uri = resolve_tracking_uri(None, tmp_path)
    client = MlflowClient(tracking_uri=uri)
    exp = open_experiment(client, "wal", artifact_root=tmp_path / "mlruns")
    assert use_wal(uri)
    with sqlite3.connect(tmp_path / "mlflow.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    run = client.create_run(exp).info.run_id  # MLflow works on, in the new mode
    client.log_param(run, "a", "1")
    assert MlflowClient(tracking_uri=uri).get_run(run).data.params == {"a": "1"}
    assert not use_wal("sqlite:///relative.db")
    assert not use_wal("http://127.0.0.1:5000")
    assert not use_wal(f"sqlite:///{tmp_path / 'missing-dir' / 'mlflow.db'}")


def _target(tmp_path: Path) -> tuple[MlflowClient, TrackingTarget]:
    uri = resolve_tracking_uri(None, tmp_path)
    client = MlflowClient(tracking_uri=uri)
    exp = open_experiment(client, "lookup", artifact_root=tmp_path / "mlruns")
    parent = client.create_run(exp, tags={"slimtune.role": "search"}).info.run_id
    return client, TrackingTarget(uri, exp, parent)


def test_one_lookup_finds_a_trial_by_id_and_adopts_it_by_number(tmp_path: Path) -> None:
    client, target = _target(tmp_path)
    params = TrialParams.from_dict({"lr": 1e-3, "batch_size": 32, "sparsity": 0.5, "bits": 8})
    assert find_trial_run(client, target, "t-1", 3) is None
    run_id = start_trial_run(
        client, target, trial_id="t-1", number=3, params=params, extra_params={}
    )
    found = find_trial_run(client, target, "t-1", 3)  # a retry: same id
    assert found is not None and found.info.run_id == run_id
    assert "slimtune.previous_trial_id" not in found.data.tags
    adopted = find_trial_run(client, target, "t-9", 3)  # resumed under a new id
    assert adopted is not None and adopted.info.run_id == run_id
    assert adopted.data.tags["slimtune.trial_id"] == "t-9"
    assert adopted.data.tags["slimtune.previous_trial_id"] == "t-1"
    assert find_trial_run(client, target, "t-1", 4) is None


class _FixedBody:
    """A trial body that measures nothing: the seam the orchestration benchmark uses."""

    def __call__(self, task: Task, params: TrialParams, settings: TrialSettings) -> TrialResult:
        path = settings.work_dir / "model.onnx"
        path.write_bytes(b"placeholder")
        metrics = {"accuracy": 1.0 - params.sparsity, "size_bytes": 11.0, "latency_ms": 0.5}
        return TrialResult(metrics=metrics, tags={"artifact": "real"}, onnx_path=path)


def test_trainable_runs_an_injected_body_inside_its_mlflow_run(
    tmp_path: Path, recwarn: Any
) -> None:
    client, target = _target(tmp_path)
    spec = parse_spec(
        "experiment: seam\ntask: digits\ntrials: 1\nseed: 0\ntraining: {epochs: 1}\n"
        "resources: {cpu: 1}\nlatency: {warmup: 0, repeats: 5, threads: 1}\n"
    )
    ctx = TrialContext(
        tracking=target,
        runs_dir=tmp_path / "runs",
        cache_dir=tmp_path / "cache",
        spec=spec,
        baseline_threads=1,
    )
    trainable = make_trainable(ctx, body=_FixedBody())
    # Outside a Tune session tune.report only warns; everything else runs as in a worker.
    trainable({"lr": 1e-3, "batch_size": 32, "sparsity": 0.25, "bits": 8, TRIAL_NUMBER_KEY: 0})
    run = find_trial_run(client, target, "trial-0", 0)
    assert run is not None and run.info.status == "FINISHED"
    assert run.data.metrics["accuracy"] == pytest.approx(0.75)
    assert run.data.params["sparsity"] == "0.25"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/model.onnx"]


def test_end_at_report_stops_every_trial_at_its_report_and_never_the_search() -> None:
    stopper = EndAtReport()
    assert stopper("t-1", {"accuracy": 0.9}) and stopper("t-2", {"trial_failed": 1})
    assert not stopper.stop_all()
