"""The driver's account of a search (``orchestrator._records``): real Ray Tune ``Result``
objects, a real MLflow SQLite store and real files. The searches themselves, interrupted or
with their store deleted, are in test_faults.py."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from ray.tune import Result

from orchestrator._counts import FAILED_KEY
from orchestrator._records import (
    RecordsLost,
    RecordsWatch,
    SearchAccount,
    SearchInterrupted,
    StoreIdentity,
    check_account,
    end_interrupted,
    mlflow_counts,
    verify_records,
)

OBJECTIVES = ["accuracy", "size_gzip_bytes", "latency_ms"]
DONE = {"accuracy": 0.9, "size_gzip_bytes": 1e4, "latency_ms": 0.1}


def _result(metrics: dict[str, Any], error: Exception | None = None) -> Result:
    return Result(metrics=metrics, checkpoint=None, error=error, path="/tmp/trial")


def test_trials_cut_off_without_an_outcome_are_not_ended() -> None:
    results = [
        _result({**DONE, "mlflow_run_id": "a"}),
        _result({FAILED_KEY: 1, "trial_error": "OSError: disk full", "mlflow_run_id": "b"}),
        _result({**DONE, "mlflow_run_id": "c"}, RuntimeError("recorded with other parameters")),
        _result({}),  # stopped by Ctrl-C before it reported (Ray marks it TERMINATED)
    ]
    account = SearchAccount.of(results, OBJECTIVES)
    assert account.ended == 3 and account.finished_run_ids == ("a",)
    assert (account.counts.finished, account.counts.failed) == (1, 3)
    assert account.errors["b"] == "OSError: disk full"
    assert "recorded with other parameters" in account.errors["c"]


def test_trials_stopped_early_are_ended_but_a_trial_cut_off_after_a_rung_is_not() -> None:
    rung = {"rung_epoch": 1, "rung_accuracy": 0.5, "rung_seconds": 2.0}
    results = [
        _result({**DONE, "mlflow_run_id": "a", "trial_id": "ta"}),
        _result({**rung, "mlflow_run_id": "b", "trial_id": "tb"}),  # the scheduler stopped it
        _result({**rung, "early_stopped": 1, "mlflow_run_id": "c", "trial_id": "tc"}),  # replayed
        _result({**rung, "mlflow_run_id": "d", "trial_id": "td"}),  # cut off by Ctrl-C
    ]
    account = SearchAccount.of(results, OBJECTIVES, frozenset({"tb"}))
    assert account.ended == 3 and account.finished_run_ids == ("a",)
    counts = account.counts
    assert (counts.finished, counts.stopped, counts.failed) == (1, 2, 1)
    assert set(account.errors) == {"d"}  # a stopped trial's run is the driver's, not an error


def _store(tmp_path: Path) -> tuple[MlflowClient, str, dict[str, str]]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("x", artifact_location=(tmp_path / "mlruns").as_uri())
    parent = client.create_run(exp, tags={"slimtune.role": "search"}).info.run_id
    runs = {}
    for name, status in [
        ("done", "FINISHED"),
        ("failed", "FAILED"),
        ("cut", "RUNNING"),
        ("stopped", "KILLED"),
    ]:
        tags = {"mlflow.parentRunId": parent, "slimtune.role": "trial"}
        if name == "stopped":  # stopped early by the search's scheduler: neither count
            tags["early_stopped"] = "true"
        runs[name] = client.create_run(exp, tags=tags).info.run_id
        if status != "RUNNING":
            client.set_terminated(runs[name], status)
    return client, parent, runs


def test_an_interrupted_search_ends_killed_with_mlflow_counts_and_the_resume_command(
    tmp_path: Path,
) -> None:
    client, parent, runs = _store(tmp_path)
    err = end_interrupted(client, parent, 5, Path("/w/c.yaml"), KeyboardInterrupt())
    assert isinstance(err, SearchInterrupted)
    assert "1 of 5 trials finished and 2 failed" in str(err)
    assert "`slimtune search /w/c.yaml --resume`" in str(err)
    search = client.get_run(parent)
    assert search.info.status == "KILLED"
    assert search.data.metrics["trials_finished"] == 1 and search.data.metrics["trials_failed"] == 2
    cut = client.get_run(runs["cut"])
    assert cut.info.status == "KILLED" and "--resume" in cut.data.tags["slimtune.error"]
    assert mlflow_counts(client, parent) == (1, 2)


def test_results_short_of_the_trials_are_an_interruption_and_runs_left_open_are_closed(
    tmp_path: Path,
) -> None:
    client, parent, runs = _store(tmp_path)
    identity = StoreIdentity.of(client.tracking_uri)
    results = [_result({**DONE, "mlflow_run_id": runs["done"]})]
    account = SearchAccount.of(results, OBJECTIVES)
    with pytest.raises(
        SearchInterrupted, match="stopped with 1 of its 2 trials not run to the end"
    ):
        check_account(client, parent, 2, account, RecordsWatch(identity))
    assert client.get_run(runs["cut"]).info.status == "RUNNING"  # left to end_interrupted
    check_account(client, parent, 1, account, RecordsWatch(identity))
    cut = client.get_run(runs["cut"])
    assert cut.info.status == "FAILED" and "without recording" in cut.data.tags["slimtune.error"]


def test_a_deleted_or_replaced_store_is_noticed(tmp_path: Path) -> None:
    client, parent, runs = _store(tmp_path)
    identity = StoreIdentity.of(client.tracking_uri)
    watch = RecordsWatch(identity)
    t = "t0"
    assert identity is not None and not watch(t, {}) and not watch.stop_all()
    verify_records(client, parent, identity, [runs["done"]])
    with pytest.raises(RecordsLost, match="1 trials that finished have no finished MLflow run"):
        verify_records(client, parent, identity, [runs["done"], runs["failed"]])
    db = tmp_path / "mlflow.db"
    data = db.read_bytes()
    db.unlink()
    watch(t, {})
    assert watch.stop_all() and "was deleted during the search" in watch.lost
    db.write_bytes(data)  # the same content, another file
    with pytest.raises(RecordsLost, match="replaced by another file") as err:
        verify_records(client, parent, identity, [])
    assert "are gone" in str(err.value) and "Fix:" in str(err.value)
    # A copy restored from Ray Tune's tuner.pkl (by --resume) watches nothing.
    restored = pickle.loads(pickle.dumps(watch))
    restored(t, {})
    assert restored.identity is None and not restored.stop_all()
    assert StoreIdentity.of("http://mlflow.internal:5000") is None


def test_a_reopened_run_keeps_why_its_last_attempt_ended_aside(tmp_path: Path) -> None:
    from orchestrator._tracking import fail_run, reopen_run

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("reopen")).info.run_id
    fail_run(client, run_id, "KeyboardInterrupt: cut off", status="KILLED")
    reopen_run(client, client.get_run(run_id))
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"
    assert "slimtune.error" not in run.data.tags
    assert run.data.tags["slimtune.previous_error"] == "KeyboardInterrupt: cut off"
