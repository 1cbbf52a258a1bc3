"""Rung states: where a trial stood at a rung, so that a trial lost with its node goes on from
its last rung rather than from the start.

With early stopping, a search may ask a trial for its state at a rung (``RungReport.save``):
the compressed model's weights with their masks and fake quantization, the training position
(``trials._train.FitState``: Adam's moments, the shuffling generator, torch's random state),
the gradual pruning schedule's history and the early measurement. A retried trial given that
state (``run_trial(..., resume=state)``) sets itself up as before (the same baseline, the same
structured pruning and plan, deterministic), loads it, skips the epochs done and the early
measurement, and trains on: on the CPU the final weights are those of a trial that never
stopped (tests/trials/test_rung_state.py).

The file is read with ``torch.load(weights_only=True)``: tensors and plain containers only, so
a state file planted in the search's storage cannot run code.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from searchspace import SlimtuneError, TrialParams
from trials._compress import GradualPruning
from trials._early import EarlyMeasurement, PtqGrids, RungHook, RungReporter
from trials._settings import TrialSettings
from trials._task import Task
from trials._train import FitState

STATE_FILE = "rung_state.pt"
FORMAT = 1


class RungStateError(SlimtuneError):
    """A saved rung state that cannot be read, or that belongs to another trial."""


def trial_identity(params: TrialParams, settings: TrialSettings) -> dict[str, Any]:
    """What a state must have been saved by: the same knobs, seed, epochs and baseline."""
    return {
        "params": params.to_dict(),
        "seed": settings.seed,
        "epochs": settings.epochs,
        "baseline_seed": settings.dense_seed,
    }


@dataclass(frozen=True)
class RungState:
    """A trial's state after ``epoch`` epochs of fine-tuning (see the module docstring)."""

    epoch: int
    identity: dict[str, Any]
    model: dict[str, torch.Tensor]
    fit: dict[str, Any]
    pruning_history: list[tuple[int, float]]
    early: EarlyMeasurement
    seconds: float

    def __post_init__(self) -> None:
        if self.epoch < 1:
            raise RungStateError(f"a rung state is saved after an epoch, got epoch {self.epoch}")
        if int(self.fit.get("epoch", -1)) != self.epoch:
            raise RungStateError(
                f"a rung state's training position must be at its epoch {self.epoch}, got "
                f"{self.fit.get('epoch')!r}"
            )
        if not math.isfinite(self.seconds) or self.seconds < 0:
            raise RungStateError(f"a rung state's seconds must be >= 0, got {self.seconds}")

    @classmethod
    def capture(
        cls,
        model: nn.Module,
        fit: FitState,
        schedule: GradualPruning | None,
        early: EarlyMeasurement,
        *,
        identity: dict[str, Any],
        seconds: float,
    ) -> RungState:
        """The state now, after ``fit.epoch`` epochs (tensors copied: training goes on)."""
        return cls(
            epoch=fit.epoch,
            identity=identity,
            model={k: v.detach().clone() for k, v in model.state_dict().items()},
            fit=fit.snapshot(),
            pruning_history=list(schedule.history) if schedule is not None else [],
            early=early,
            seconds=seconds,
        )

    def save(self, directory: Path) -> Path:
        path = Path(directory) / STATE_FILE
        torch.save(
            {
                "format": FORMAT,
                "epoch": self.epoch,
                "identity": self.identity,
                "model": self.model,
                "fit": self.fit,
                "pruning_history": [list(h) for h in self.pruning_history],
                "early": {
                    "metrics": self.early.metrics,
                    "tags": self.early.tags,
                    "seconds": self.early.seconds,
                },
                "seconds": self.seconds,
            },
            path,
        )
        return path

    @classmethod
    def load(cls, directory: Path) -> RungState:
        path = Path(directory) / STATE_FILE
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
            early = data["early"]
            return cls(
                epoch=int(data["epoch"]),
                identity=dict(data["identity"]),
                model=dict(data["model"]),
                fit=dict(data["fit"]),
                pruning_history=[(int(s), float(p)) for s, p in data["pruning_history"]],
                early=EarlyMeasurement(
                    metrics={k: float(v) for k, v in early["metrics"].items()},
                    tags={k: str(v) for k, v in early["tags"].items()},
                    seconds=float(early["seconds"]),
                ),
                seconds=float(data["seconds"]),
            )
        except RungStateError:
            raise
        except Exception as exc:
            raise RungStateError(
                f"the rung state {path} must be the file a trial saved at a rung, but it "
                f"cannot be read ({type(exc).__name__}: {exc}). The trial starts over from its "
                "first epoch instead."
            ) from exc

    def check_for(self, identity: Mapping[str, Any], epochs: int) -> None:
        """Refuse a state of another trial (other knobs, seed, epochs or baseline)."""
        if dict(identity) != self.identity:
            diff = sorted(
                k
                for k in set(identity) | set(self.identity)
                if identity.get(k) != self.identity.get(k)
            )
            raise RungStateError(
                f"a rung state must belong to the trial that resumes it, but it differs in "
                f"{diff}: it was saved by another trial or another search. The trial starts over."
            )
        if not 1 <= self.epoch < epochs:
            raise RungStateError(
                f"a rung state's epoch must be in [1, {epochs - 1}] to resume a {epochs}-epoch "
                f"trial, got {self.epoch}"
            )

    def restore(self, model: nn.Module, fit: FitState, schedule: GradualPruning | None) -> None:
        """Load the weights (masks and fake quantization included: ``model`` must be set up as
        when the state was saved) and the pruning schedule's history. ``fit`` must have been
        built from ``self.fit``."""
        if fit.epoch != self.epoch:
            raise RungStateError(f"the training position is at {fit.epoch}, not {self.epoch}")
        try:
            model.load_state_dict(self.model, strict=True)
        except RuntimeError as exc:
            raise RungStateError(
                "a rung state must fit the model set up for its trial, but its tensors do not "
                f"({str(exc)[:300]}): the trial's set-up is not the one that saved it. Fix: "
                "report this as a slimtune bug; a new search starts its trials afresh."
            ) from exc
        if schedule is not None:
            schedule.history = list(self.pruning_history)
        elif self.pruning_history:
            raise RungStateError("the rung state has a pruning schedule but the trial has none")


def start_rungs(
    model: nn.Module,
    task: Task,
    params: TrialParams,
    settings: TrialSettings,
    rungs: RungReporter,
    *,
    measure: Callable[[], EarlyMeasurement],
    schedule: GradualPruning | None,
    ptq_grid: PtqGrids,
    start: float,
    resume: RungState | None,
) -> tuple[RungHook, FitState]:
    """The rung reports of a trial about to fine-tune ``model``, and the training position
    ``fit`` must keep. A new trial measures its untrained artifact first (``measure``) and
    reports rung 0; a resumed one loads ``resume`` into ``model`` and ``schedule``, keeps its
    early measurement and its seconds so far, and reports from the next epoch on. Each report
    after an epoch can save the state (``RungReport.save``)."""
    fit = FitState(resume.fit if resume is not None else None)
    identity = trial_identity(params, settings)
    if resume is None:
        early, begun = measure(), start
    else:
        resume.check_for(identity, settings.epochs)
        resume.restore(model, fit, schedule)
        early, begun = resume.early, start - resume.seconds

    def saver(directory: Path) -> Path:
        seconds = time.perf_counter() - begun
        state = RungState.capture(model, fit, schedule, early, identity=identity, seconds=seconds)
        return state.save(directory)

    hook = RungHook(model, task, early, rungs, start=begun, ptq_grid=ptq_grid, saver=saver)
    if resume is None:
        hook.before_training()
    return hook, fit
