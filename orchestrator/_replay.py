"""A trial already recorded in MLflow, run again after ``--resume``: its report is read back from
its run rather than the trial re-run (finished, or stopped early), once its parameters are checked
against the ones the restored search proposes."""

from __future__ import annotations

import math
from dataclasses import MISSING, fields
from typing import Any

from orchestrator._scheduler import RUNG_KEY, STOPPED_KEY
from searchspace import SlimtuneError, TrialParams


class RecordDisagrees(SlimtuneError):
    """A trial's MLflow record and the search's saved state disagree (after ``--resume``)."""


def finished_replay(existing: Any, params: TrialParams, number: int) -> dict[str, Any]:
    """The report of a trial that finished before the driver went down (resume), from its run:
    it is not re-run. Raises :class:`RecordDisagrees` if the run holds other parameters."""
    differ = differing_params(existing, params)
    if differ:  # a restored study never re-proposes a finished number otherwise
        raise RecordDisagrees(
            f"trial number {number} is already recorded with other parameters (run "
            f"{existing.info.run_id}: {_describe(differ)}); the search state and MLflow "
            "disagree. Fix: start a new search without --resume."
        )
    return {
        **existing.data.metrics,
        "mlflow_run_id": existing.info.run_id,
        "artifact": existing.data.tags.get("artifact", ""),
        "replayed": 1,
    }


def stopped_replay(run: Any) -> dict[str, Any]:
    """The report of a trial recorded as stopped early (a re-run after --resume)."""
    return {
        RUNG_KEY: int(run.data.tags.get("stopped_at_epoch", "0") or 0),
        STOPPED_KEY: 1,
        "rung_seconds": float(run.data.metrics.get("trial_seconds", 0.0)),
        "mlflow_run_id": run.info.run_id,
        "replayed": 1,
    }


# A knob's default is what slimtune did before the knob existed (quant_scheme: qat, the only
# scheme there was): a run recorded by an older slimtune lacks the knob and ran with it.
_KNOB_DEFAULTS = {f.name: str(f.default) for f in fields(TrialParams) if f.default is not MISSING}


def differing_params(run: Any, params: TrialParams) -> dict[str, tuple[str | None, Any]]:
    """The knobs whose value ``run`` logged differs from ``params``: name -> (logged, now).

    A knob the run did not log compares as its default, so that ``--resume`` of a search
    recorded before that knob was searchable matches its finished trials (they ran with it).
    """
    logged = {**_KNOB_DEFAULTS, **run.data.params}
    return {
        k: (logged.get(k), v)
        for k, v in params.to_dict().items()
        if k not in logged or not _close(logged[k], v)
    }


def _describe(differ: dict[str, tuple[str | None, Any]]) -> str:
    return ", ".join(f"{k} logged {old!r}, proposed {new!r}" for k, (old, new) in differ.items())


def _close(logged: str, value: Any) -> bool:
    if isinstance(value, float):
        try:
            return math.isclose(float(logged), value, rel_tol=1e-9)
        except ValueError:
            return False
    return logged == str(value)
