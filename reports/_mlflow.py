"""Reading a search from MLflow: the parent run, its trials as a table, a trial's model
(``MlflowClient``, explicit run ids)."""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from reports._early import STOPPED_COLUMNS
from reports._errors import ReportError, SearchNotFound
from reports._noise import (
    TOLERANCES_TAG,
    Tolerance,
    parse_tolerances,
)
from reports._pareto import (
    parse_objectives,
)

ROLE_TAG = "slimtune.role"
OBJECTIVES_TAG = "slimtune.objectives"
MODEL_ARTIFACT = "model/model.onnx"
BASELINE_PREFIX = "baseline_"

_FLOAT_PARAMS = ("lr", "sparsity")
_INT_PARAMS = ("batch_size", "bits")
_TAG_COLUMNS = {
    "artifact": "artifact",
    "format": "format",
    "slimtune.error": "error",
    "latency_converged": "latency_converged",
    **STOPPED_COLUMNS,
}
_BASE_COLUMNS = [
    "run_id",
    "trial_id",
    "trial_number",
    "status",
    "lr",
    "batch_size",
    "sparsity",
    "bits",
]
RANK_TAGS = ("pareto", "pareto_rank", "pareto_strict", "pareto_group")
BOOL_TAGS = ("pareto", "pareto_strict")
_STANDARD_METRICS = ("accuracy", "size_bytes", "size_gzip_bytes", "latency_ms", "latency_p90_ms")


@dataclass(frozen=True, eq=False)
class SearchRuns:
    """One search as MLflow recorded it: the parent run and a table with a row per trial.

    ``baseline`` holds the parent's ``baseline_*`` metrics without the prefix (``accuracy``,
    ``size_bytes``, ...), so it can be passed to :func:`plot_tradeoffs`. ``trials`` has the
    columns ``run_id``, ``trial_id``, ``trial_number`` (int), ``status``, the knobs ``lr``,
    ``batch_size``, ``sparsity``, ``bits`` (typed; ints become nullable ``Int64`` only if some run
    lacks the value), every metric as a float column, the tags ``artifact``, ``format``,
    ``error`` (``slimtune.error``), ``pareto`` (bool) and ``pareto_rank`` (Int64) when some run
    has them, ``end_time`` (ms since the epoch, NaN while running), and any other param as a
    string column. Rows are sorted by ``trial_number``. ``parent_params``, ``parent_metrics``
    and ``parent_tags`` are the parent run's, as logged.
    """

    parent_run_id: str
    experiment_id: str
    objectives: list[tuple[str, str]]
    baseline: dict[str, float]
    trials: pd.DataFrame
    experiment: str = ""
    parent_params: dict[str, str] = field(default_factory=dict)
    parent_metrics: dict[str, float] = field(default_factory=dict)
    parent_tags: dict[str, str] = field(default_factory=dict)
    # metric -> the tolerance of noise-aware dominance (the parent's slimtune.tolerances tag;
    # auto for a metric it does not name). Every front of this search is ranked with them.
    tolerances: dict[str, Tolerance] = field(default_factory=dict)


def load_search(
    tracking_uri: str,
    experiment: str,
    *,
    parent_run_id: str | None = None,
    _page_size: int = 1000,
) -> SearchRuns:
    """Load a search: the newest parent run of ``experiment`` (or ``parent_run_id``), its trials.

    ``_page_size`` (private, for tests) is how many child runs each search_runs call fetches.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage != "active":
        names = sorted(e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY))
        state = "does not exist" if exp is None else "is deleted"
        raise SearchNotFound(
            f"MLflow experiment {experiment!r} {state} at {tracking_uri}; existing experiments: "
            f"{names}. Fix: pass the 'experiment' name of the search config, and the tracking "
            "URI the search logged to."
        )
    if parent_run_id is None:
        found = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{ROLE_TAG}` = 'search'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not found:
            raise SearchNotFound(
                f"experiment {experiment!r} has no search run (a run tagged {ROLE_TAG}=search) "
                f"at {tracking_uri}. Fix: run `slimtune search` with this experiment first."
            )
        parent = found[0]
    else:
        parent = get_parent(client, parent_run_id, tracking_uri)
        if parent.info.experiment_id != exp.experiment_id:
            raise SearchNotFound(
                f"run {parent_run_id} belongs to experiment id {parent.info.experiment_id}, not "
                f"to {experiment!r} (id {exp.experiment_id}). Fix: pass the experiment the run "
                "was logged to, or leave parent_run_id out to load its newest search."
            )
    return load_runs(client, parent, page_size=_page_size)


def download_model(tracking_uri: str, run_id: str, dst: Path) -> Path:
    """Copy a trial's ``model/model.onnx`` artifact to ``dst`` and return the written path.

    ``dst`` is the file to write (parent folders are created); an existing folder receives
    ``model.onnx``. An external-data side file ``model/model.onnx.data``, if logged, is copied
    next to it under its own name (the ONNX file refers to it by that name).
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    target = Path(dst)
    if target.is_dir():
        target = target / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, MODEL_ARTIFACT, dst_path=tmp)
        except (MlflowException, OSError) as exc:
            raise ReportError(
                f"cannot download artifact {MODEL_ARTIFACT!r} of run {run_id} from "
                f"{tracking_uri}: {str(exc).rstrip('.')}. Fix: pass the run id of a finished "
                "trial (a child run of the search), which logs its ONNX file there."
            ) from exc
        shutil.copyfile(local, target)
        side = [
            f.path
            for f in client.list_artifacts(run_id, "model")
            if f.path == MODEL_ARTIFACT + ".data"
        ]
        if side:
            data = client.download_artifacts(run_id, side[0], dst_path=tmp)
            shutil.copyfile(data, target.parent / Path(side[0]).name)
    return target


def get_parent(client: MlflowClient, run_id: str, tracking_uri: str) -> Run:
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise SearchNotFound(
            f"search run {run_id!r} does not exist at {tracking_uri}: {exc.message}. Fix: pass "
            "the id of a search's parent run (tag slimtune.role=search), or leave it out to use "
            "the newest search of the experiment."
        ) from exc
    role = run.data.tags.get(ROLE_TAG)
    if role != "search":
        raise SearchNotFound(
            f"run {run_id} is not a search run: tag {ROLE_TAG} must be 'search', got {role!r}. "
            "Fix: pass the parent run id (the trial's tag mlflow.parentRunId)."
        )
    return run


def load_runs(client: MlflowClient, parent: Run, *, page_size: int = 1000) -> SearchRuns:
    exp = client.get_experiment(parent.info.experiment_id)
    children = child_runs(client, parent, page_size=page_size)
    return runs_of_search(parent, children, experiment=exp.name if exp is not None else "")


def child_runs(client: MlflowClient, parent: Run, *, page_size: int = 1000) -> list[Run]:
    condition = f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    children: list[Run] = []
    token: str | None = None
    while True:
        page = client.search_runs(
            [parent.info.experiment_id],
            filter_string=condition,
            max_results=page_size,
            page_token=token,
        )
        children.extend(page)
        token = page.token
        if not token:
            break
    return children


def runs_of_search(parent: Run, children: list[Run], *, experiment: str) -> SearchRuns:
    tag = parent.data.tags.get(OBJECTIVES_TAG)
    if not tag:
        raise ReportError(
            f"search run {parent.info.run_id} has no {OBJECTIVES_TAG} tag; it must list the "
            "objectives as metric:direction pairs, e.g. 'accuracy:maximize,latency_ms:minimize'. "
            "Fix: set the tag on the parent run (the orchestrator writes it when a search starts)."
        )
    objectives = parse_objectives(tag)
    tolerances = parse_tolerances(parent.data.tags.get(TOLERANCES_TAG), [m for m, _ in objectives])
    baseline = {
        key[len(BASELINE_PREFIX) :]: float(value)
        for key, value in parent.data.metrics.items()
        if key.startswith(BASELINE_PREFIX)
    }
    metrics = [*_STANDARD_METRICS, *(m for m, _ in objectives if m not in _STANDARD_METRICS)]
    return SearchRuns(
        parent_run_id=parent.info.run_id,
        experiment_id=parent.info.experiment_id,
        objectives=objectives,
        baseline=baseline,
        trials=_trials_frame(children, metrics),
        experiment=experiment,
        parent_params=dict(parent.data.params),
        parent_metrics={k: float(v) for k, v in parent.data.metrics.items()},
        parent_tags=dict(parent.data.tags),
        tolerances=tolerances,
    )


def _trials_frame(runs: list[Run], metrics: list[str]) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for run in runs:
        tags, params = run.data.tags, run.data.params
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "trial_id": tags.get("slimtune.trial_id"),
            "trial_number": _number(
                run, "tag slimtune.trial_number", tags.get("slimtune.trial_number"), integer=True
            ),
            "status": run.info.status,
        }
        for name in _FLOAT_PARAMS:
            row[name] = _number(run, f"param {name}", params.get(name), integer=False)
        for name in _INT_PARAMS:
            row[name] = _number(run, f"param {name}", params.get(name), integer=True)
        row.update({k: float(v) for k, v in run.data.metrics.items()})
        for tag, column in _TAG_COLUMNS.items():
            row[column] = tags.get(tag)
        for name in BOOL_TAGS:
            if name in tags:
                row[name] = tags[name] == "true"
        for name in ("pareto_rank", "pareto_group"):
            if tags.get(name, "").isdigit():
                row[name] = int(tags[name])
        row["end_time"] = float(run.info.end_time) if run.info.end_time else math.nan
        for name, value in params.items():
            if name not in row:
                row[name] = value
        rows.append(row)

    df = pd.DataFrame(rows)
    for column in [*_BASE_COLUMNS, *_TAG_COLUMNS.values()]:
        if column not in df.columns:
            df[column] = pd.Series([None] * len(df), dtype=object)
    for column in metrics:
        if column not in df.columns:
            df[column] = np.nan
    for column in ("trial_number", *_INT_PARAMS):
        values = df[column]
        df[column] = values.astype("int64" if values.notna().all() else "Int64")
    for column in _FLOAT_PARAMS:
        df[column] = df[column].astype(float)
    metric_columns = {k for run in runs for k in run.data.metrics} | set(metrics)
    for column in metric_columns:
        df[column] = df[column].astype(float)
    for column in RANK_TAGS:
        if column in df.columns:
            df[column] = df[column].astype("boolean" if column in BOOL_TAGS else "Int64")
    if "end_time" not in df.columns:
        df["end_time"] = pd.Series(dtype=float)
    df = df.sort_values(["trial_number", "run_id"], kind="stable", na_position="last")
    return df.reset_index(drop=True)


def _number(run: Run, what: str, text: str | None, *, integer: bool) -> float | int | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or (integer and not value.is_integer()):
        kind = "an integer" if integer else "a finite number"
        raise ReportError(
            f"run {run.info.run_id}: {what} must be {kind}, got {text!r}. Fix: log it as "
            f"{kind} (the orchestrator writes str(value))."
        )
    return int(value) if integer else value
