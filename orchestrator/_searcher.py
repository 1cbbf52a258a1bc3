"""A Ray Tune Searcher that asks an Optuna multi-objective study and tells it every outcome.

Ours rather than ``ray.tune.search.optuna.OptunaSearch`` because that one swallows errors from
``tell``, forces a NopPruner and has exclusive integer bounds (see the stack notes). This one is
small: ``suggest`` asks, ``on_trial_complete`` tells (values, PRUNED for a trial stopped early
at a rung, or FAIL with the reason).
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState
from ray.tune.search import Searcher

from orchestrator._scheduler import RUNG_KEY, is_rung

log = logging.getLogger(__name__)

TRIAL_NUMBER_KEY = "trial_number"


class OptunaAskTell(Searcher):
    """Propose configs from ``study`` over ``distributions``; at most ``max_trials`` of them."""

    def __init__(
        self,
        study: optuna.Study,
        distributions: Mapping[str, BaseDistribution],
        metrics: Sequence[str],
        *,
        max_trials: int,
    ) -> None:
        super().__init__(metric=None, mode=None)
        if len(study.directions) != len(metrics):
            raise ValueError(
                f"the study has {len(study.directions)} directions but {len(metrics)} metrics "
                f"were given ({list(metrics)}); pass one metric per direction"
            )
        self._study = study
        self._distributions = dict(distributions)
        self._metrics = list(metrics)
        self._max_trials = max_trials
        self._asked = 0
        self._live: dict[str, optuna.Trial] = {}

    @property
    def study(self) -> optuna.Study:
        return self._study

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self._asked >= self._max_trials:
            # Ray's sentinel for "no more trials" is a str, though the base class types a dict.
            return Searcher.FINISHED  # type: ignore[return-value]
        trial = self._study.ask(self._distributions)
        self._asked += 1
        self._live[trial_id] = trial
        return {**trial.params, TRIAL_NUMBER_KEY: trial.number}

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        trial = self._live.pop(trial_id, None)
        if trial is None:
            return
        if not error and is_rung(result):
            # Its last report was a rung: the search's scheduler stopped it early.
            trial.set_user_attr("pruned_at_epoch", int(result[RUNG_KEY]))  # type: ignore[index]
            self._study.tell(trial, state=TrialState.PRUNED)
            return
        values = _objective_values(result, self._metrics) if not error else None
        if values is None:
            reason = "error" if error else f"missing or non-finite metrics {self._metrics}"
            trial.set_user_attr("fail_reason", reason)
            self._study.tell(trial, state=TrialState.FAIL)
        else:
            self._study.tell(trial, values)

    def save(self, checkpoint_path: str) -> None:
        """Ray Tune checkpoints the searcher with the experiment: the study and the counters."""
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"study": self._study, "asked": self._asked, "live": self._live}, f)

    def restore(self, checkpoint_path: str) -> None:
        # Only files this searcher wrote into the search's own storage are ever read back.
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self._study = state["study"]
        self._asked = state["asked"]
        self._live = state["live"]


def _objective_values(result: dict[str, Any] | None, metrics: Sequence[str]) -> list[float] | None:
    if not result:
        return None
    try:
        values = [float(result[m]) for m in metrics]
    except (KeyError, TypeError, ValueError):
        return None
    return values if all(math.isfinite(v) for v in values) else None
