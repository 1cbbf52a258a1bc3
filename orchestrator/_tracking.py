"""MLflow records of a search, always through MlflowClient with explicit run ids.

Layout (read back by ``reports``): one parent run per search (tag ``slimtune.role=search``) and
one child run per trial (tags ``mlflow.parentRunId``, ``slimtune.role=trial``,
``slimtune.trial_id``, ``slimtune.trial_number``), the ONNX file as artifact ``model/model.onnx``.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.tracking import MlflowClient

from searchspace import SearchSpec, SlimtuneError, TrialParams
from searchspace import redact_uri as redact_uri  # the one credential mask, re-exported
from trials import PLAN_JSON

ROLE_TAG = "slimtune.role"
# On the search run: the name of its config file among the run's artifacts (what --resume
# compares the config it is given with).
CONFIG_ARTIFACT_TAG = "slimtune.config_artifact"
MAX_TAG_CHARS = 5000
# Each finished trial's record (trials.TrialRecord as JSON): what `slimtune rebuild` reads.
RECORD_ARTIFACT = "trial/record.json"
PLAN_ARTIFACT_DIR = "trial"  # trial/plan.json (trials.PLAN_JSON)


class TrackingError(SlimtuneError):
    """The MLflow tracking store cannot be used."""


@dataclass(frozen=True)
class TrackingTarget:
    """Where a search's runs go. Plain strings, so it pickles into Ray workers."""

    uri: str
    experiment_id: str
    parent_run_id: str


def resolve_tracking_uri(uri: str | None, cwd: Path) -> str:
    """``None`` means ``sqlite:///<cwd>/mlflow.db`` with an absolute path (trials chdir)."""
    if uri is None:
        return f"sqlite:///{(cwd / 'mlflow.db').resolve()}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rel = uri.removeprefix("sqlite:///")
        return f"sqlite:///{(cwd / rel).resolve()}"
    return uri


def probe_tracking(uri: str, *, timeout_s: float = 5.0) -> None:
    """Fail at once when a remote tracking server does not answer (MLflow's own client would
    retry for minutes first). Local stores (sqlite, file) need no probe."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        problem = f"HTTP {exc.code}"
    except OSError as exc:
        problem = type(exc).__name__ + (f" ({exc.reason})" if hasattr(exc, "reason") else "")
    raise TrackingError(
        f"the MLflow tracking server at {redact_uri(uri)} does not answer ({problem} from "
        f"/health within {timeout_s:g} s). Fix: start it (e.g. `mlflow server --host 127.0.0.1 "
        "--port 5000 --backend-store-uri sqlite:////abs/path/mlflow.db`) or correct "
        "`tracking.uri` in the config."
    )


def use_wal(uri: str) -> bool:
    """Put a local SQLite store in write-ahead-log mode; return whether it is in that mode.

    The mode is a property of the database file, so every process that opens it afterwards (the
    trials, the driver, ``slimtune ui``) uses it. A commit then appends to ``mlflow.db-wal``
    instead of rewriting a rollback journal, and a reader (the driver re-reading all trials for
    the live front) no longer blocks the trials' writes. On a busy machine a trial's MLflow calls
    took 2-4x less time; on a quiet one about the same (benchmarks/BENCHMARKS.md). All processes
    must be on one machine, so a search run on a cluster should not call this. Other URIs, and a
    store that another process holds locked right now, are left as they are (``False``): only
    speed is at stake.
    """
    prefix = "sqlite:///"
    path = uri.removeprefix(prefix)
    if not uri.startswith(prefix) or not path.startswith("/") or "?" in path:
        return False
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=5)) as con:
            mode = con.execute("PRAGMA journal_mode=WAL").fetchone()
    except sqlite3.Error:
        return False
    return bool(mode) and str(mode[0]).lower() == "wal"


def open_experiment(client: MlflowClient, name: str, *, artifact_root: Path | None) -> str:
    """Return the experiment's id, creating it (with a local artifact root if given)."""
    found = find_experiment(client, name)
    if found is not None:
        return found
    location = artifact_root.resolve().as_uri() if artifact_root is not None else None
    return str(client.create_experiment(name, artifact_location=location))


def find_experiment(client: MlflowClient, name: str) -> str | None:
    """The id of experiment ``name``, or ``None`` when there is none; creates nothing."""
    try:
        exp = client.get_experiment_by_name(name)
    except Exception as exc:
        raise TrackingError(
            f"cannot reach the MLflow tracking store at {redact_uri(client.tracking_uri)!r}: "
            f"{type(exc).__name__}. "
            "Fix: start the tracking server or correct `tracking.uri` in the config."
        ) from exc
    if exp is None:
        return None
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow experiment {name!r} is deleted; restore it in the MLflow UI or choose "
            "another `experiment` name"
        )
    return str(exp.experiment_id)


def start_search_run(
    client: MlflowClient, experiment_id: str, spec: SearchSpec, *, config_path: Path
) -> str:
    objectives = ",".join(f"{o.metric}:{o.direction}" for o in spec.objectives)
    run = client.create_run(
        experiment_id,
        run_name=f"search-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={
            ROLE_TAG: "search",
            "slimtune.objectives": objectives,
            # The rule of noise-aware dominance (reports.parse_tolerances reads it back).
            "slimtune.tolerances": ",".join(
                f"{o.metric}:{o.tolerance_text()}" for o in spec.objectives
            ),
            "slimtune.task": spec.task,
            CONFIG_ARTIFACT_TAG: config_path.name,
        },
    )
    run_id = str(run.info.run_id)
    params = {
        "task": spec.task,
        "sampler": spec.sampler.name,
        "trials": spec.trials,
        "concurrency": spec.concurrency,
        "epochs": spec.training.epochs,
        "seed": spec.seed,
        "resources.cpu": spec.resources.cpu,  # read back by reports for the search's cost
        "resources.gpu": spec.resources.gpu,
        "objectives": objectives,
        **{f"space.{k}": _short(v) for k, v in spec.space.knobs().items()},
    }
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    client.log_artifact(run_id, str(config_path))
    return run_id


def resumable_search_run(client: MlflowClient, experiment_id: str, experiment: str) -> str:
    """The latest search run of the experiment that did not finish (killed, failed, running)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = 'search'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise TrackingError(
            f"--resume: experiment {experiment!r} has no search to resume. "
            "Fix: run `slimtune search CONFIG` without --resume."
        )
    last = runs[0]
    if last.info.status == "FINISHED":
        raise TrackingError(
            f"--resume: the latest search of {experiment!r} (run {last.info.run_id}) finished; "
            "there is nothing to resume. Fix: run without --resume to start a new search."
        )
    return str(last.info.run_id)


def log_metrics(
    client: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int = 0
) -> None:
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def log_onnx(client: MlflowClient, run_id: str, onnx_path: Path, artifact_dir: str) -> None:
    """Log ``onnx_path`` as ``<artifact_dir>/model.onnx`` whatever its file name."""
    if onnx_path.name == "model.onnx":
        client.log_artifact(run_id, str(onnx_path), artifact_dir)
        return
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "model.onnx"
        shutil.copyfile(onnx_path, dst)
        client.log_artifact(run_id, str(dst), artifact_dir)


def find_trial_run(
    client: MlflowClient, target: TrackingTarget, trial_id: str, number: int
) -> Run | None:
    """The child run already recorded for this trial in this search, if any.

    Makes trial logging idempotent. A trial that Ray retries (a lost node) or restores after
    ``--resume`` keeps its trial id and is found by it. A trial the driver had started but not
    yet checkpointed when it was killed is asked again by the restored study under the same
    trial number and a new trial id: it is found by its number, and adopts the run.

    One query per trial (it runs before every trial): a trial's config carries its number, so
    the run found by id is always among those found by number.
    """
    runs = _child_runs(client, target, f"tags.`slimtune.trial_number` = '{number}'")
    if not runs:
        return None
    run = runs[0]
    previous = run.data.tags.get("slimtune.trial_id", "")
    if previous == trial_id:
        return run
    client.log_batch(
        run.info.run_id,
        tags=[
            RunTag("slimtune.trial_id", trial_id),
            RunTag("slimtune.previous_trial_id", previous),
        ],
    )
    return client.get_run(run.info.run_id)


def _child_runs(client: MlflowClient, target: TrackingTarget, condition: str) -> list[Run]:
    runs = client.search_runs(
        [target.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{target.parent_run_id}' and {condition}",
        max_results=10,
    )
    if len(runs) > 1:
        raise TrackingError(
            f"{len(runs)} child runs of search {target.parent_run_id} match {condition}; each "
            "trial must have exactly one. Fix: delete the extra runs in the MLflow UI."
        )
    return list(runs)


def start_trial_run(
    client: MlflowClient,
    target: TrackingTarget,
    *,
    trial_id: str,
    number: int,
    params: TrialParams,
    extra_params: Mapping[str, object],
) -> str:
    run_id = _open_trial_run(client, target, trial_id=trial_id, number=str(number))
    all_params = {**params.to_dict(), **extra_params}
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in all_params.items()])
    return run_id


def _open_trial_run(
    client: MlflowClient, target: TrackingTarget, *, trial_id: str, number: str
) -> str:
    """Create a trial's child run (named ``trial-007``), tagged with its parent, role, Ray
    trial id and number; return its id."""
    run = client.create_run(
        target.experiment_id,
        run_name=f"trial-{number:>03}",
        tags={
            "mlflow.parentRunId": target.parent_run_id,
            ROLE_TAG: "trial",
            "slimtune.trial_id": trial_id,
            "slimtune.trial_number": number,
        },
    )
    return str(run.info.run_id)


def start_failed_trial_run(
    client: MlflowClient, target: TrackingTarget, *, trial_id: str, config: Mapping[str, object]
) -> str:
    """Open the run of a trial that failed before its own run existed (e.g. a config that is no
    TrialParams), tagged like any trial's, with the config it was given as params; the caller
    ends it FAILED with the reason."""
    number = str(config.get("trial_number", "?"))[:50]
    run_id = _open_trial_run(client, target, trial_id=trial_id, number=number)
    params = [Param(str(k)[:250], str(v)[:500]) for k, v in config.items()]
    client.log_batch(run_id, params=params[:100])
    return run_id


def finish_trial_run(
    client: MlflowClient,
    run_id: str,
    *,
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
    onnx_path: Path,
    record_json: str | None = None,
) -> None:
    """Log a trial's metrics, tags, ONNX file and (when given) its rebuild record
    (``RECORD_ARTIFACT``) and its plan (``trial/plan.json``), then mark the run FINISHED."""
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        tags=[RunTag(k, str(v)[:MAX_TAG_CHARS]) for k, v in tags.items()],
    )
    log_onnx(client, run_id, onnx_path, "model")
    plan = onnx_path.with_name(PLAN_JSON)
    if plan.exists():  # the trial's per-layer plan (trials.run_trial writes it)
        client.log_artifact(run_id, str(plan), PLAN_ARTIFACT_DIR)
    if record_json is not None:
        client.log_text(run_id, record_json, RECORD_ARTIFACT)
    client.set_terminated(run_id, "FINISHED")


def reopen_run(client: MlflowClient, run: Run) -> None:
    """Mark ``run`` RUNNING again (a retried or resumed trial, a resumed search). Why its last
    attempt ended moves from ``slimtune.error`` to ``slimtune.previous_error``: it is not this
    attempt's outcome."""
    run_id = run.info.run_id
    client.update_run(run_id, status="RUNNING")
    previous = run.data.tags.get("slimtune.error")
    if previous is not None:
        client.set_tag(run_id, "slimtune.previous_error", previous)
        client.delete_tag(run_id, "slimtune.error")


def fail_run(client: MlflowClient, run_id: str, reason: str, *, status: str = "FAILED") -> None:
    client.set_tag(run_id, "slimtune.error", reason[:MAX_TAG_CHARS])
    client.set_terminated(run_id, status)


def _short(v: object) -> str:
    return str(v.model_dump() if hasattr(v, "model_dump") else v)[:500]
