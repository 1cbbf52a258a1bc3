"""The ``early_stopping`` block of a search: multi-objective ASHA over fine-tuning epochs."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

EARLY_STOPPING_NAMES: tuple[str, ...] = ("none", "mo-asha")


class EarlyStopping(BaseModel):
    """How a search stops trials that cannot reach the Pareto front (docs/early_stopping.md).

    ``name``: ``none`` (every trial fine-tunes ``training.epochs``) or ``mo-asha``: each trial
    exports and measures its compressed, untrained model first (size and latency do not change
    while it trains), reports its validation accuracy after every epoch, and at the rungs
    ``min_epochs * reduction_factor**k`` (below ``training.epochs``) continues only if its
    non-dominated rank among the trials that reached that rung puts it in the top
    ``1 / reduction_factor`` (ties broken by crowding distance).
    ``skip_dominated``: also stop a trial before it trains when, even with the best accuracy
    seen so far plus ``skip_margin`` (None: two standard errors of that accuracy on the
    validation split, at least 0.01), its measured size and latency are dominated by a
    finished trial.
    """

    # strict and finite, as every block of the config (tests/searchspace/test_strict_types.py)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    name: Literal["none", "mo-asha"] = "none"
    min_epochs: Annotated[int, Field(ge=1, le=1000)] = 1
    reduction_factor: Annotated[int, Field(ge=2, le=100)] = 3
    skip_dominated: bool = False
    skip_margin: Annotated[float, Field(ge=0, le=1)] | None = None

    @property
    def enabled(self) -> bool:
        return self.name != "none"

    def rungs(self, epochs: int) -> tuple[int, ...]:
        """The epochs at which a trial may be stopped: ``min_epochs * reduction_factor**k``
        below ``epochs`` (the last epoch is the full-fidelity result, not a rung)."""
        out: list[int] = []
        epoch = self.min_epochs
        while epoch < epochs:
            out.append(epoch)
            epoch *= self.reduction_factor
        return tuple(out)
