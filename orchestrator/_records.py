"""The driver's account of a search: did it run every trial, and are its records still there?

A search is finished only when Ray Tune's results account for all ``trials`` and MLflow holds
the records they point to. Anything short of that is said, never reported as success:
- results short of ``trials`` (Ctrl-C: Ray Tune's SIGINT handler ends ``fit()`` normally) end
  the search run KILLED, with how to resume (:class:`SearchInterrupted`, exit 130);
- a store that is gone (``mlflow.db`` deleted or replaced mid-search: the driver's open
  connection would go on writing into the deleted file) fails the search loudly
  (:class:`RecordsLost`, exit 1). :class:`RecordsWatch` notices it at each trial's result and
  stops the search; :func:`verify_records` checks again at the end;
- no trial run is left RUNNING: :func:`close_trial_runs` ends those the trials could not end
  themselves (a killed worker, a store that refused the write), with the reason.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from ray.tune import Stopper

from orchestrator._counts import ERROR_KEY, FAILED_KEY, TrialCounts, is_finished, is_stopped
from orchestrator._scheduler import STOPPED_TAG
from orchestrator._tracking import MAX_TAG_CHARS, ROLE_TAG, fail_run, log_metrics, redact_uri
from searchspace import SlimtuneError

log = logging.getLogger(__name__)


class SearchInterrupted(SlimtuneError):
    """The search ended before all its trials ran (Ctrl-C, SIGINT): resumable."""


class RecordsLost(SlimtuneError):
    """The search's MLflow records are gone (store deleted, replaced or unreachable)."""


@dataclass(frozen=True)
class StoreIdentity:
    """Which file a local SQLite store is: its path and inode, taken when the search starts."""

    path: str
    device: int
    inode: int

    @classmethod
    def of(cls, uri: str) -> StoreIdentity | None:
        """The identity of ``uri``'s database file; ``None`` for other stores (a server)."""
        prefix = "sqlite:///"
        path = uri.removeprefix(prefix).split("?", 1)[0]
        if not uri.startswith(prefix) or not path.startswith("/"):
            return None
        st = os.stat(path)
        return cls(path, st.st_dev, st.st_ino)

    def problem(self) -> str:
        """Empty while the file is the one the search started with; else what happened."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return f"the MLflow store {self.path} was deleted during the search"
        if (st.st_dev, st.st_ino) != (self.device, self.inode):
            return f"the MLflow store {self.path} was replaced by another file during the search"
        return ""


class RecordsWatch(Stopper):
    """Stop the search when its local MLflow store is deleted or replaced (one ``stat`` per
    trial result). A copy restored by ``--resume`` (from Ray Tune's ``tuner.pkl``) watches
    nothing: the store may have moved since, and the end-of-search check still runs."""

    def __init__(self, identity: StoreIdentity | None) -> None:
        self.identity = identity
        self.lost = ""

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if self.identity is not None and not self.lost:
            self.lost = self.identity.problem()
        return False

    def stop_all(self) -> bool:
        return bool(self.lost)

    def __getstate__(self) -> dict[str, Any]:
        return {"identity": None, "lost": ""}


def records_lost(message: str, uri: str) -> RecordsLost:
    return RecordsLost(
        f"{message}: the search's records ({redact_uri(uri)}) are gone, so its results are "
        "lost. Fix: keep the tracking store in place while a search runs (restore it from a "
        "backup if you have one), then run the search again."
    )


def records_unwritable(exc: BaseException, uri: str) -> RecordsLost:
    return RecordsLost(
        f"the search could not write its records to the MLflow store {redact_uri(uri)} "
        f"({type(exc).__name__}: {str(exc)[:300]}). Fix: free space on the store's disk (or "
        "bring the tracking server back), then continue with `slimtune search CONFIG --resume`."
    )


def verify_records(
    client: MlflowClient,
    parent_run_id: str,
    identity: StoreIdentity | None,
    finished_run_ids: Iterable[str],
) -> None:
    """Raise :class:`RecordsLost` unless the store is the one the search started with, holds
    the search run, and holds a FINISHED run for each trial Ray reported finished."""
    if identity is not None and identity.problem():
        raise records_lost(identity.problem(), client.tracking_uri)
    try:
        client.get_run(parent_run_id)
        runs = {r.info.run_id: r.info.status for r in trial_runs(client, parent_run_id)}
    except Exception as exc:
        raise records_lost(
            f"the search run {parent_run_id} cannot be read back ({type(exc).__name__}: "
            f"{str(exc)[:200]})",
            client.tracking_uri,
        ) from exc
    missing = [r for r in finished_run_ids if runs.get(r) != "FINISHED"]
    if missing:
        raise records_lost(
            f"{len(missing)} trials that finished have no finished MLflow run (e.g. {missing[0]})",
            client.tracking_uri,
        )


def check_account(
    client: MlflowClient,
    parent_run_id: str,
    trials: int,
    account: SearchAccount,
    watch: RecordsWatch,
) -> None:
    """Raise :class:`RecordsLost` when the search's records are gone, :class:`SearchInterrupted`
    when Ray's results fall short of ``trials`` (Ctrl-C: Ray Tune's SIGINT handler ends
    ``fit()`` normally); else end the trial runs their trials left open, FAILED with Ray's
    reason."""
    if watch.lost:
        raise records_lost(watch.lost, client.tracking_uri)
    verify_records(client, parent_run_id, watch.identity, account.finished_run_ids)
    if account.ended < trials:
        raise SearchInterrupted(
            f"the search stopped with {trials - account.ended} of its {trials} trials not run "
            "to the end"
        )
    gone = "its process ended without recording an outcome (see Ray's error in the log)"
    close_trial_runs(client, parent_run_id, {**account.errors, "": gone}, status="FAILED")


def trial_runs(client: MlflowClient, parent_run_id: str) -> list[Any]:
    """Every trial run of the search run ``parent_run_id``."""
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`{ROLE_TAG}` = 'trial'"
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=query, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def close_trial_runs(
    client: MlflowClient, parent_run_id: str, reasons: Mapping[str, str], *, status: str
) -> int:
    """End the search's trial runs still RUNNING with ``status`` and the reason: Ray's error
    for that run (``reasons``: run id -> error) or, for a run Ray gave none, ``reasons[""]``.
    Returns how many it ended."""
    open_runs = [
        r.info.run_id
        for r in trial_runs(client, parent_run_id)
        if r.info.status == RunStatus.to_string(RunStatus.RUNNING)
    ]
    for run_id in open_runs:
        reason = reasons.get(run_id) or reasons.get("", "")
        client.set_tag(run_id, "slimtune.error", reason[:MAX_TAG_CHARS])
        client.set_terminated(run_id, status)
    return len(open_runs)


def mlflow_counts(client: MlflowClient, parent_run_id: str) -> tuple[int, int]:
    """(finished, failed) trial runs of the search as MLflow records them: FINISHED, and
    FAILED or KILLED (a run stopped early by the search's scheduler, KILLED with tag
    ``early_stopped=true``, is neither: it ended as the search meant it to)."""
    runs = trial_runs(client, parent_run_id)
    statuses = [r.info.status for r in runs if r.data.tags.get(STOPPED_TAG) != "true"]
    return statuses.count("FINISHED"), sum(s in ("FAILED", "KILLED") for s in statuses)


@dataclass(frozen=True)
class SearchAccount:
    """What Ray Tune's results say of a search: the counts, how many trials reached an outcome
    (finished, reported their failure, or ended with an error: the rest were cut off), the
    MLflow runs of the finished ones, and each failed trial's reason by its MLflow run. A trial
    stopped early by the search's scheduler (``stopped_ids``, see ``is_stopped``) reached its
    outcome: it is ended, neither finished nor failed.

    Outcomes, not Ray's trial statuses: after a SIGINT Ray Tune saves its state and then marks
    the trials it stops TERMINATED, whether or not they ran to the end."""

    counts: TrialCounts
    ended: int
    finished_run_ids: tuple[str, ...]
    errors: Mapping[str, str]

    @classmethod
    def of(
        cls,
        results: Sequence[Any],
        metric_names: Sequence[str],
        stopped_ids: Container[str] | None = None,
    ) -> SearchAccount:
        finished, errors, ended = [], {}, 0
        for r in results:
            metrics = r.metrics or {}
            run_id = str(metrics.get("mlflow_run_id") or "")
            done = is_finished(r, metric_names)
            stopped = is_stopped(r, stopped_ids)
            ended += done or stopped or bool(metrics.get(FAILED_KEY)) or r.error is not None
            if done:
                finished.append(run_id)
            elif run_id and not stopped:
                error = metrics.get(ERROR_KEY) or (repr(r.error) if r.error else "")
                errors[run_id] = str(error or "the trial ended without a result")
        return cls(
            counts=TrialCounts.of(results, metric_names, stopped_ids),
            ended=ended,
            finished_run_ids=tuple(r for r in finished if r),
            errors=errors,
        )


def end_interrupted(
    client: MlflowClient, parent_run_id: str, trials: int, config: Path, exc: BaseException
) -> SearchInterrupted:
    """Record an interrupted search, and return the error that says how to resume it.

    Its trial runs cut off mid-way end KILLED (``--resume`` runs them again into the same run),
    the search run logs the counts MLflow holds and ends KILLED."""
    detail = str(exc) if isinstance(exc, SearchInterrupted) else "Ctrl-C (SIGINT)"
    resume = f"slimtune search {config} --resume"
    note = ""
    finished = failed = 0
    try:
        cut = f"interrupted with the search; `{resume}` runs it again"
        close_trial_runs(client, parent_run_id, {"": cut}, status="KILLED")
        finished, failed = mlflow_counts(client, parent_run_id)
        log_metrics(client, parent_run_id, {"trials_finished": finished, "trials_failed": failed})
        fail_run(client, parent_run_id, f"interrupted: {detail}", status="KILLED")
    except Exception as record_exc:
        note = f" (recording this in MLflow failed: {type(record_exc).__name__}: {record_exc})"
    return SearchInterrupted(
        f"interrupted: {detail}; {finished} of {trials} trials finished and {failed} failed, "
        f"as recorded in MLflow. The search run {parent_run_id} ends KILLED{note}. Fix: "
        f"continue it with `{resume}` (in the same directory, or with the same --workdir): "
        "finished trials are kept, the others run again."
    )


def end_failed(client: MlflowClient, parent_run_id: str, reason: str) -> None:
    """Record a search that failed: trial runs still open end KILLED, the search run FAILED.
    Best effort: the error being raised matters more than its record."""
    try:
        stopped = f"the search stopped before this trial ended: {reason}"
        close_trial_runs(client, parent_run_id, {"": stopped}, status="KILLED")
        fail_run(client, parent_run_id, reason)
    except Exception as exc:
        log.warning("could not record the search's failure in MLflow: %s: %s", type(exc), exc)
