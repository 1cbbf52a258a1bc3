"""Multi-objective early stopping in Ray Tune: the MO-ASHA ``TrialScheduler``, the keys of a
trial's rung reports, and the records of the trials it stopped.

A trial of a search with ``early_stopping: {name: mo-asha}`` measures its compressed untrained
model first and reports after every fine-tuning epoch (``trials._early``); the trainable turns
each report into a ``tune.report`` carrying ``RUNG_KEY`` (``rung_result``). :class:`MoAsha`
applies ``orchestrator._mo_asha``'s rule to those reports and keeps its state in a JSON file
next to the search's runs, which ``--resume`` reads back (Ray Tune restores the scheduler as it
was pickled when the search started, empty). Final reports carry no ``RUNG_KEY``: stoppers that
count trials (``FinalReportsOnly``) and the searcher (which tells Optuna PRUNED for a trial
whose last report was a rung) tell the two apart by it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback, Stopper
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from orchestrator._mo_asha import Decision, MoAshaState
from searchspace import SlimtuneError
from trials import RungReport, write_text_atomic

RUNG_KEY = "rung_epoch"  # in every rung report, never in a final one
STOPPED_KEY = "early_stopped"  # a replayed report of a trial stopped before --resume
STOPPED_TAG = "early_stopped"  # the MLflow tag ("true") of a trial run stopped early
RUNG_PREFIX = "rung_"
STATE_FILE = "mo_asha_state.json"


def rung_result(report: RungReport, objectives: list[str], run_id: str) -> dict[str, Any]:
    """The ``tune.report`` payload of a rung report: ``rung_<metric>`` for the accuracy and
    each objective, the validation split's size, the trial's seconds so far."""
    names = dict.fromkeys(["accuracy", *objectives])
    return {
        RUNG_KEY: report.epoch,
        **{f"{RUNG_PREFIX}{m}": float(report.metrics[m]) for m in names if m in report.metrics},
        "rung_val_samples": report.val_samples,
        "rung_seconds": report.seconds,
        "mlflow_run_id": run_id,
    }


def is_rung(result: dict[str, Any] | None) -> bool:
    return bool(result) and RUNG_KEY in result  # type: ignore[operator]


def _rung_metrics(result: dict[str, Any]) -> dict[str, float]:
    skip = {RUNG_KEY, "rung_val_samples", "rung_seconds"}
    return {
        k[len(RUNG_PREFIX) :]: float(v)
        for k, v in result.items()
        if k.startswith(RUNG_PREFIX) and k not in skip and isinstance(v, int | float)
    }


class SchedulerStateDamaged(SlimtuneError):
    """The saved state of the early-stopping scheduler cannot be read back."""


class MoAsha(FIFOScheduler):
    """Multi-objective ASHA (see ``orchestrator._mo_asha``): stop a trial at a rung epoch
    unless its non-dominated rank there puts it in the top ``1/eta``; asynchronous.

    ``state_path``: where the rung records are kept after every decision (JSON); a scheduler
    unpickled by Ray Tune on ``--resume`` reads them back before its first decision.
    """

    def __init__(self, state: MoAshaState, state_path: Path) -> None:
        super().__init__()
        if not state_path.is_absolute():
            raise ValueError(f"state_path must be absolute, got {state_path}")
        self._initial = state
        self._path = state_path
        self._state: MoAshaState | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Pickled by Ray Tune when the search starts: the records live in the JSON file.
        return {**self.__dict__, "_state": None}

    @property
    def state(self) -> MoAshaState:
        if self._state is None:
            if not self._path.exists():  # a copy: _initial stays empty
                self._state = MoAshaState.from_json(self._initial.to_json())
                return self._state
            try:
                self._state = MoAshaState.from_json(self._path.read_text())
            except (OSError, ValueError, TypeError, KeyError) as exc:
                raise SchedulerStateDamaged(
                    f"the early-stopping scheduler's state {self._path} must be the JSON it "
                    f"wrote, but it cannot be read ({type(exc).__name__}: {exc}). Fix: delete "
                    "that file and resume again (the rungs start over empty; trials already "
                    "stopped stay stopped), or start a new search."
                ) from exc
        return self._state

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        if not is_rung(result):
            return TrialScheduler.CONTINUE
        if result.get(STOPPED_KEY):  # stopped before the driver went down: stays stopped
            return TrialScheduler.STOP
        decision = self.state.on_rung(
            trial.trial_id,
            int(result[RUNG_KEY]),
            _rung_metrics(result),
            val_samples=int(result.get("rung_val_samples", 0)),
        )
        if decision is None:
            return TrialScheduler.CONTINUE
        self._save()
        return TrialScheduler.STOP if decision.stop else TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> None:
        if result and not is_rung(result):
            self.state.on_final(trial.trial_id, result)
            self._save()

    def stopped(self, trial_id: str) -> Decision | None:
        """The decision that stopped ``trial_id``, None if none did."""
        decision = self.state.decision(trial_id)
        return decision if decision is not None and decision.stop else None

    def _save(self) -> None:
        write_text_atomic(self._path, self.state.to_json())

    def debug_string(self) -> str:
        rungs = self.state.records
        return "MoAsha: " + ", ".join(f"rung {r}: {len(t)} trials" for r, t in rungs.items())


class FinalReportsOnly(Stopper):
    """``inner`` sees final reports only (a stopper that counts trials, or that stops each
    trial at its one report); rung reports pass through."""

    def __init__(self, inner: Stopper) -> None:
        self.inner = inner

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False if is_rung(result) else bool(self.inner(trial_id, result))

    def stop_all(self) -> bool:
        return bool(self.inner.stop_all())


class EarlyStopRecords(Callback):
    """In the driver: a trial that ``scheduler`` stopped gets its MLflow run ended KILLED with
    tags ``early_stopped=true``, ``stopped_at_epoch`` and ``early_stop_reason``, and metric
    ``trial_seconds`` (its seconds up to the stop: its cost).

    The driver does it, not the trial: only the scheduler knows the reason, and the trial's
    thread must end at once when stopped, or Ray cannot reuse its actor for the next trial
    (it waits ``TUNE_FUNCTION_THREAD_TIMEOUT_S`` for it, then fails that next trial)."""

    def __init__(self, scheduler: MoAsha, tracking_uri: str) -> None:
        self.scheduler = scheduler
        self.tracking_uri = tracking_uri

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        decision = self.scheduler.stopped(trial.trial_id)
        last = trial.last_result or {}
        run_id = last.get("mlflow_run_id")
        if decision is None or not run_id or last.get("replayed"):
            return  # (replayed: stopped before --resume, its run already ended and tagged)
        client = MlflowClient(tracking_uri=self.tracking_uri)
        seconds = last.get("rung_seconds")
        metrics = (
            [Metric("trial_seconds", float(seconds), int(time.time() * 1000), 0)]
            if isinstance(seconds, int | float)
            else []
        )
        tags = [RunTag(k, v) for k, v in stop_tags(decision).items()]
        client.log_batch(str(run_id), metrics=metrics, tags=tags)
        client.set_terminated(str(run_id), "KILLED")


def stop_tags(decision: Decision) -> dict[str, str]:
    return {
        STOPPED_TAG: "true",
        "stopped_at_epoch": str(decision.epoch),
        "early_stop_reason": decision.reason[:500],
    }
