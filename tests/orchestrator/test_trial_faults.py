"""A trial's failures at every stage end its MLflow run FAILED with the reason, reported once.

Runs slimtune's real trial function (``run_trial_in_mlflow``, what each Ray trial runs) against a
real MLflow SQLite store, with a trivial trial body, so no Ray and no training are needed: what
is under test is the bookkeeping around the body.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from orchestrator import _tracking
from orchestrator._counts import ERROR_KEY, FAILED_KEY
from orchestrator._tracking import TrackingTarget
from orchestrator._trainable import TrialContext, run_trial_in_mlflow
from searchspace import TrialParams, parse_spec
from trials import Task, TrialResult, TrialSettings

GOOD = {"lr": 1e-3, "batch_size": 64, "sparsity": 0.2, "bits": 8, "trial_number": 0}


def _store(tmp_path: Path, artifacts: Path) -> tuple[MlflowClient, TrialContext]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("faults", artifact_location=artifacts.as_uri())
    parent = client.create_run(exp, tags={"slimtune.role": "search"}).info.run_id
    ctx = TrialContext(
        tracking=TrackingTarget(uri=uri, experiment_id=exp, parent_run_id=parent),
        runs_dir=tmp_path / "runs",
        cache_dir=tmp_path / "cache",
        spec=parse_spec("experiment: faults\ntask: digits\n"),
        baseline_threads=1,
    )
    return client, ctx


def _body(tmp_path: Path) -> Any:
    """A trial body that 'exports' a 64 KB file and measures it, instantly."""

    def body(task: Task, params: TrialParams, settings: TrialSettings) -> TrialResult:
        path = tmp_path / "model.onnx"
        path.write_bytes(os.urandom(64 * 1024))
        metrics = {"accuracy": 0.9, "size_gzip_bytes": 65536.0, "latency_ms": 0.1}
        return TrialResult(metrics=metrics, tags={"artifact": "real"}, onnx_path=path)

    return body


def _trial_runs(client: MlflowClient, ctx: TrialContext) -> list[Any]:
    runs = client.search_runs([ctx.tracking.experiment_id])
    return [r for r in runs if r.data.tags.get("slimtune.role") == "trial"]


def _assert_failed_once(
    client: MlflowClient, ctx: TrialContext, reports: list[dict[str, Any]], reason: str
) -> None:
    assert len(reports) == 1 and reports[0][FAILED_KEY] == 1, reports
    assert reason in reports[0][ERROR_KEY]
    [run] = _trial_runs(client, ctx)
    assert run.info.status == "FAILED"
    assert reason in run.data.tags["slimtune.error"]
    assert run.data.tags["mlflow.parentRunId"] == ctx.tracking.parent_run_id
    assert reports[0]["mlflow_run_id"] == run.info.run_id
    assert "slimtune.attempts" not in run.data.tags  # once: nothing retried it


def test_a_config_that_is_no_trial_params_is_a_failed_run(tmp_path: Path) -> None:
    client, ctx = _store(tmp_path, tmp_path / "mlruns")
    reports: list[dict[str, Any]] = []
    bad = {**GOOD, "lr": float("inf")}
    run_trial_in_mlflow(ctx, bad, "t0", body=_body(tmp_path), report=reports.append)
    _assert_failed_once(client, ctx, reports, "`lr > 0` must hold, but got lr=inf")
    [run] = _trial_runs(client, ctx)
    assert run.data.tags["slimtune.trial_number"] == "0" and run.data.params["lr"] == "inf"


def test_a_good_trial_finishes_its_run(tmp_path: Path) -> None:
    """The control for the tests around it: the same body and store, nothing injected."""
    client, ctx = _store(tmp_path, tmp_path / "mlruns")
    reports: list[dict[str, Any]] = []
    run_trial_in_mlflow(ctx, GOOD, "t0", body=_body(tmp_path), report=reports.append)
    assert len(reports) == 1 and FAILED_KEY not in reports[0], reports
    [run] = _trial_runs(client, ctx)
    assert run.info.status == "FINISHED" and run.data.metrics["accuracy"] == 0.9


def test_an_os_error_writing_the_artifact_fails_the_trial_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_tracking, "log_onnx", full)
    client, ctx = _store(tmp_path, tmp_path / "mlruns")
    reports: list[dict[str, Any]] = []
    run_trial_in_mlflow(ctx, GOOD, "t0", body=_body(tmp_path), report=reports.append)
    _assert_failed_once(client, ctx, reports, "OSError: [Errno 28] No space left on device")


@contextlib.contextmanager
def _full_filesystem(where: Path) -> Iterator[Path]:
    """A real 256 KB tmpfs at ``where``, filled up; skips where mounting is not permitted."""
    where.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)]
    try:
        done = subprocess.run(mount, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        pytest.skip("no `mount` command here")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        (where / "mlruns").mkdir()
        with contextlib.suppress(OSError), open(where / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_a_full_filesystem_under_the_artifacts_fails_the_trial_once(tmp_path: Path) -> None:
    with _full_filesystem(tmp_path / "full") as full:
        client, ctx = _store(tmp_path, full / "mlruns")
        reports: list[dict[str, Any]] = []
        run_trial_in_mlflow(ctx, GOOD, "t0", body=_body(tmp_path), report=reports.append)
        _assert_failed_once(client, ctx, reports, "No space left on device")
