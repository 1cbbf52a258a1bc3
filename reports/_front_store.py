"""Writing a search's Pareto front back to MLflow while it runs and when it ends: the ``pareto``
tags of every trial, the ``hypervolume``/``pareto_size`` history of the parent run, and the
front's files (``pareto.csv``, plots). Explicit run ids, through ``MlflowClient`` only."""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric, Run, RunTag
from mlflow.tracking import MlflowClient

from reports._errors import ReportError
from reports._interactive import plot_interactive
from reports._knobs import varying_knobs
from reports._mlflow import (
    BOOL_TAGS,
    RANK_TAGS,
    SearchRuns,
    child_runs,
    get_parent,
    load_runs,
    runs_of_search,
)
from reports._noise import (
    tolerance_summary,
)
from reports._pareto import (
    front_size,
    hypervolume,
    hypervolume_curve,
    pareto_ranks,
    reference_point,
)
from reports._plots import plot_hypervolume, plot_tradeoffs


@dataclass(frozen=True, eq=False)
class FrontUpdate:
    """What :func:`update_front` found and wrote.

    ``trials``: every trial with ``pareto`` and ``pareto_rank`` (``<NA>`` when unranked);
    ``finished``: FINISHED trials; ``front_size``: trials of rank 0; ``hypervolume``: of the
    finished trials against ``reference`` (None when the baseline lacks a value the reference
    needs, see ``reference_error``); ``tags_written``: child runs whose tags were rewritten;
    ``steps_logged``: the steps of the ``hypervolume``/``pareto_size`` points logged now.
    """

    search: SearchRuns
    trials: pd.DataFrame
    finished: int
    front_size: int
    hypervolume: float | None
    reference: dict[str, float] | None
    reference_error: str | None
    tags_written: int
    steps_logged: list[int]


def update_front(tracking_uri: str, parent_run_id: str, *, backfill: bool = True) -> FrontUpdate:
    """Bring a search's Pareto tags and hypervolume up to date; cheap enough to run per trial.

    Over the FINISHED child runs and the parent's objectives: computes non-dominated ranks,
    rewrites the tags ``pareto=true|false`` and ``pareto_rank`` of the runs whose values changed
    (only those), and logs on the parent ``hypervolume`` and ``pareto_size`` with step = the
    number of finished trials. Steps already logged are not logged again. With ``backfill``,
    every step since the last logged one gets a point (the trials ordered by end time), so the
    history has one point per finished trial even when several finish between two calls;
    without it only the current step is logged. The hypervolume's reference point comes from
    the dense baseline (:func:`reports.reference_point`), so its history never decreases.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    search = load_runs(client, get_parent(client, parent_run_id, tracking_uri))
    return _update(client, search, backfill=backfill)


def _update(
    client: MlflowClient, search: SearchRuns, *, backfill: bool, last_step: int | None = None
) -> FrontUpdate:
    """``last_step``: the last ``pareto_size`` step logged on the parent, when the caller knows
    it (:class:`FrontTracker`); ``None`` reads it from the store."""
    trials = search.trials
    ranked = pareto_ranks(trials, search.objectives, tolerances=search.tolerances)
    finished_mask = ranked["status"] == "FINISHED"
    finished = ranked[finished_mask]

    written = 0
    have = _rank_tags(trials.loc[finished.index])  # as logged
    for run_id, want in _rank_tags(finished).items():
        changed = [RunTag(k, v) for k, v in want.items() if have[run_id].get(k) != v]
        # A trial that left the front keeps no group: its old pareto_group tag goes.
        stale = [k for k in have[run_id] if k not in want]
        if changed:
            client.log_batch(run_id, tags=changed)
        for key in stale:
            client.delete_tag(run_id, key)
        written += bool(changed or stale)

    reference: dict[str, float] | None = None
    reference_error: str | None = None
    try:
        reference = reference_point(search.baseline, search.objectives)
    except ReportError as exc:
        reference_error = str(exc)

    n = len(finished)
    if last_step is None:
        history = client.get_metric_history(search.parent_run_id, "pareto_size")
        last_step = max((int(m.step) for m in history), default=0)
    last = last_step
    steps = list(range(last + 1, n + 1)) if backfill else ([n] if n > last else [])
    if steps:
        now = int(time.time() * 1000)
        points: list[Metric] = []
        if reference is not None:
            for k, hv, size in hypervolume_curve(
                finished, search.objectives, reference, steps=steps, tolerances=search.tolerances
            ):
                points.append(Metric("pareto_size", float(size), now, k))
                points.append(Metric("hypervolume", hv, now, k))
        else:
            for k in steps:
                size = front_size(
                    _first_finished(finished, k), search.objectives, tolerances=search.tolerances
                )
                points.append(Metric("pareto_size", float(size), now, k))
        client.log_batch(search.parent_run_id, metrics=points)
    hv_now = hypervolume(finished, search.objectives, reference) if reference else None
    return FrontUpdate(
        search=search,
        trials=ranked,
        finished=n,
        front_size=int(finished["pareto"].sum()),
        hypervolume=hv_now,
        reference=reference,
        reference_error=reference_error,
        tags_written=written,
        steps_logged=steps,
    )


# Run ids per search_runs query when a tracker fetches runs by id.
_IDS_PER_QUERY = 100


class FrontTracker:
    """Keeps one search's front up to date while it runs: :func:`update_front`, incrementally.

    The first :meth:`update` reads the parent run (objectives, baseline) and every child run;
    later ones read only the runs named in ``ended`` (the runs whose trials ended since: the
    search's driver knows them from Ray Tune) and merge them with those it has. The
    ``pareto``/``pareto_rank`` tags and the last ``pareto_size`` step are remembered as written
    rather than read back. An update then costs about the same at trial 1000 as at trial 10,
    where re-reading every run grows with the search. Meant for the one process that writes a
    search's front; :func:`publish_front` recomputes everything from the store at the end.
    ``last_fetched`` is how many child runs the last update read.
    """

    def __init__(self, tracking_uri: str, parent_run_id: str) -> None:
        self.tracking_uri = tracking_uri
        self.parent_run_id = parent_run_id
        self.last_fetched = 0
        self._client = MlflowClient(tracking_uri=tracking_uri)
        self._parent: Run | None = None
        self._experiment = ""
        self._runs: dict[str, Run] = {}
        self._tags: dict[str, dict[str, str]] = {}
        self._last_step: int | None = None

    def update(self, ended: Collection[str] = (), *, backfill: bool = True) -> FrontUpdate:
        """Bring the front up to date, as :func:`update_front` does, reading the runs ``ended``
        (ids of child runs that ended since the last update; ignored by the first update)."""
        if self._parent is None:
            self._parent = get_parent(self._client, self.parent_run_id, self.tracking_uri)
            exp = self._client.get_experiment(self._parent.info.experiment_id)
            self._experiment = exp.name if exp is not None else ""
            fetched = child_runs(self._client, self._parent)
        else:
            fetched = _runs_by_id(self._client, self._parent, sorted(set(ended)))
        self.last_fetched = len(fetched)
        self._runs.update((r.info.run_id, r) for r in fetched)
        search = runs_of_search(
            self._parent, list(self._runs.values()), experiment=self._experiment
        )
        search = replace(search, trials=_with_tags(search.trials, self._tags))
        update = _update(self._client, search, backfill=backfill, last_step=self._last_step)
        if update.steps_logged:  # else unchanged (None: read from the store next time too)
            self._last_step = update.steps_logged[-1]
        self._tags.update(_rank_tags(update.trials[update.trials["status"] == "FINISHED"]))
        return update


def _runs_by_id(client: MlflowClient, parent: Run, run_ids: list[str]) -> list[Run]:
    """The child runs of ``parent`` among ``run_ids`` (others are ignored)."""
    runs: list[Run] = []
    for i in range(0, len(run_ids), _IDS_PER_QUERY):
        chunk = ", ".join(f"'{r}'" for r in run_ids[i : i + _IDS_PER_QUERY])
        runs += client.search_runs(
            [parent.info.experiment_id],
            filter_string=(
                f"tags.mlflow.parentRunId = '{parent.info.run_id}' "
                f"and attributes.run_id IN ({chunk})"
            ),
            max_results=_IDS_PER_QUERY,
        )
    return runs


# Tags the front writes on each finished trial, and the table columns they mirror.


def _rank_tags(trials: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Run id -> the ``RANK_TAGS`` values that the table's columns hold (a missing column or
    value: no tag)."""
    n = len(trials)
    columns = {
        name: trials[name].tolist() if name in trials.columns else [None] * n for name in RANK_TAGS
    }
    out: dict[str, dict[str, str]] = {}
    for i, run_id in enumerate(trials["run_id"].tolist()):
        tags = {}
        for name in RANK_TAGS:
            value = columns[name][i]
            if value is None or pd.isna(value):
                continue
            if name in BOOL_TAGS:
                tags[name] = "true" if bool(value) else "false"
            else:
                tags[name] = str(int(value))
        out[str(run_id)] = tags
    return out


def _with_tags(trials: pd.DataFrame, tags: dict[str, dict[str, str]]) -> pd.DataFrame:
    """``trials`` with the ``RANK_TAGS`` columns set from ``tags`` (run id -> tags as last
    written) where the fetched runs are older than those writes."""
    if not tags or trials.empty:
        return trials
    out = trials.copy()
    known = out["run_id"].map(tags)
    has = known.notna()
    if not has.any():
        return out
    for name in RANK_TAGS:
        if name in BOOL_TAGS:
            got = known[has].map(lambda t, n=name: t.get(n) == "true" if n in t else None)
            dtype = "boolean"
        else:
            got = known[has].map(lambda t, n=name: int(t[n]) if n in t else None)
            dtype = "Int64"
        if name not in out.columns:
            out[name] = pd.Series([pd.NA] * len(out), dtype=dtype)
        out[name] = out[name].astype(dtype)
        out.loc[has, name] = pd.array(got.tolist(), dtype=dtype)
    return out


def publish_front(
    tracking_uri: str,
    parent_run_id: str,
    *,
    out_dir: Path,
    interactive: bool = True,
    backfill: bool = False,
) -> pd.DataFrame:
    """Compute the search's Pareto front and record it in MLflow, with its plots.

    Runs :func:`update_front` (tags ``pareto``/``pareto_rank`` on the finished children,
    ``hypervolume`` and ``pareto_size`` on the parent at step = finished trials, if that step is
    not logged yet), then writes to ``out_dir`` and logs as artifacts of the parent run:
    ``pareto.csv`` (the front, best first objective first), ``accuracy_vs_size.png``,
    ``accuracy_vs_latency.png``, ``hypervolume.png`` (its history) and, with ``interactive``,
    ``trials.html`` (every trial, hover for details; opens offline). ``backfill`` is passed to
    :func:`update_front` (the search passes True, so a step a failed live update missed is
    filled in). Returns all trials with the columns ``pareto`` (False for trials that are not
    FINISHED) and ``pareto_rank``.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    search = load_runs(client, get_parent(client, parent_run_id, tracking_uri))
    update = _update(client, search, backfill=backfill)
    front = update.trials
    finished = front[front["status"] == "FINISHED"]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "pareto.csv"
    knobs = varying_knobs(search.parent_params, front)
    _front_table(finished, search.objectives, knobs).to_csv(csv_path, index=False)
    log_tolerances(client, search, finished)
    paths = [
        csv_path,
        *plot_tradeoffs(
            finished,
            search.objectives,
            out,
            baseline=search.baseline,
            tolerances=search.tolerances,
        ),
    ]
    history = hypervolume_history(client, parent_run_id)
    paths.append(plot_hypervolume(history, out / "hypervolume.png", reference=update.reference))
    if interactive:
        paths.append(
            plot_interactive(
                front,
                search.objectives,
                out / "trials.html",
                baseline=search.baseline,
                knobs=knobs,
            )
        )
    for path in paths:
        client.log_artifact(parent_run_id, str(path))
    return front


def _first_finished(finished: pd.DataFrame, k: int) -> pd.DataFrame:
    by = ["end_time", "trial_number"]
    return finished.sort_values(by, kind="stable", na_position="last").iloc[:k]


def hypervolume_history(client: MlflowClient, parent_run_id: str) -> list[tuple[int, float]]:
    """The parent's ``hypervolume`` points as (step, value), by step; the last value per step."""
    points = {
        int(m.step): float(m.value)
        for m in sorted(
            client.get_metric_history(parent_run_id, "hypervolume"), key=lambda m: m.timestamp
        )
    }
    return sorted(points.items())


def _front_table(
    finished: pd.DataFrame, objectives: list[tuple[str, str]], knobs: list[str]
) -> pd.DataFrame:
    """The front as ``pareto.csv`` writes it: the knobs that vary, the objectives, the tie
    group (``pareto_group``: its representative's trial; ``pareto_tied``: the others) and the
    latency flag, best first objective first."""
    metric_names = [m for m, _ in objectives]
    wanted = [
        "run_id",
        "trial_number",
        *knobs,
        *metric_names,
        "latency_converged",
        "pareto_group",
        "pareto_representative",
        "pareto_tied",
        "pareto_strict",
        "artifact",
    ]
    columns = [c for c in dict.fromkeys(wanted) if c in finished.columns]
    front = finished[finished["pareto"]][columns]
    first, direction = objectives[0]
    return front.sort_values(
        [first, "trial_number"], ascending=[direction == "minimize", True], kind="stable"
    )


def log_tolerances(client: MlflowClient, search: SearchRuns, finished: pd.DataFrame) -> None:
    """Log on the parent run the tolerance each objective's dominance used
    (``tolerance.<metric>`` tags) and say that the hypervolume ignores them."""
    summary = tolerance_summary(search.objectives, search.tolerances, finished)
    tags = {f"tolerance.{m}": t for m, t in summary.items()}
    tags["hypervolume_values"] = "measured (no tolerance)"
    changed = [RunTag(k, v[:5000]) for k, v in tags.items() if search.parent_tags.get(k) != v]
    if changed:
        client.log_batch(search.parent_run_id, tags=changed)
