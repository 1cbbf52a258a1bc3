"""A trial's rung reports with early stopping, and the state it saves at the scheduler's rungs.

Each rung report goes to the trial's MLflow run as metric history and to Ray Tune; at a rung
of the scheduler the trial's state goes with it as a Ray Tune checkpoint, which Ray copies to
the search's storage. A trial lost with its node is retried by Ray with that checkpoint
(``tune.get_checkpoint()``) and goes on from the rung (``trials._rung_state``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from mlflow.tracking import MlflowClient
from ray.tune import Checkpoint

from orchestrator._scheduler import RUNG_KEY, rung_result
from orchestrator._tracking import log_metrics
from searchspace import TrialParams
from trials import RungReport, RungState, RungStateError, TrialSettings, trial_identity


def resume_state(
    client: MlflowClient,
    run_id: str,
    checkpoint: Checkpoint | None,
    params: TrialParams,
    settings: TrialSettings,
) -> RungState | None:
    """The rung state in ``checkpoint`` if it is this trial's; otherwise None, and the run's
    tag ``resume_refused`` says why (the trial then starts over)."""
    if checkpoint is None:
        return None
    try:
        with checkpoint.as_directory() as directory:
            state = RungState.load(Path(directory))
        state.check_for(trial_identity(params, settings), settings.epochs)
    except RungStateError as exc:
        client.set_tag(run_id, "resume_refused", str(exc)[:500])
        return None
    return state


class StoppedAtRung(BaseException):
    """Ray Tune ended the trial at this rung report (its scheduler said stop). A
    BaseException, as the ``SystemExit`` it replaces: no handler of the trial's own failures
    may take it for one."""

    def __init__(self, report: RungReport) -> None:
        super().__init__(f"stopped at epoch {report.epoch}")
        self.report = report


class RungReports:
    """A trial's ``RungReporter``: each rung goes to its MLflow run as metric history
    (``rung_<metric>`` at step = epoch) and to Ray Tune, with the trial's state as a
    checkpoint at the epochs ``save_at`` (the scheduler's rungs); the ``SystemExit`` by which
    ``tune.report`` ends a trial that the scheduler stopped becomes :class:`StoppedAtRung`."""

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        objectives: list[str],
        report: Callable[..., None],
        *,
        save_at: frozenset[int] = frozenset(),
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.objectives = objectives
        self.report = report
        self.save_at = save_at

    def __call__(self, rung: RungReport) -> None:
        payload = rung_result(rung, self.objectives, self.run_id)
        history = {k: v for k, v in payload.items() if k.startswith("rung_") and k != RUNG_KEY}
        if "torch_accuracy" in rung.metrics:
            history["rung_torch_accuracy"] = rung.metrics["torch_accuracy"]
        log_metrics(self.client, self.run_id, history, step=rung.epoch)
        if rung.epoch == 0:  # the early measurement, kept if the trial is stopped
            early = {f"early_{k}": v for k, v in rung.metrics.items()}
            log_metrics(self.client, self.run_id, early)
        try:
            if rung.save is not None and rung.epoch in self.save_at:
                # At a rung of the scheduler: the trial's state goes with the report (Ray
                # Tune copies it to the search's storage before report returns).
                with tempfile.TemporaryDirectory(prefix="slimtune-rung-") as directory:
                    rung.save(Path(directory))
                    self.report(payload, checkpoint=Checkpoint.from_directory(directory))
            else:
                self.report(payload)
        except SystemExit:
            raise StoppedAtRung(rung) from None
