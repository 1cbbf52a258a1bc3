"""A Ray Tune Searcher that asks an Optuna multi-objective study and tells it every outcome.

Ours rather than ``ray.tune.search.optuna.OptunaSearch`` because that one swallows errors from
``tell``, forces a NopPruner and has exclusive integer bounds (see the stack notes). This one is
small: ``suggest`` asks, ``on_trial_complete`` tells (values, PRUNED for a trial stopped early
at a rung, or FAIL with the reason).

Its saved state (``save``/``restore``, what ``--resume`` reads) is JSON, not a pickle: the trials
asked so far with their parameters, states and values, replayed into a fresh study on restore.
A file planted in a search's ``storage`` can then at worst make ``--resume`` refuse, never run
code (Ray Tune's own ``tuner.pkl`` still can: see ``orchestrator._state``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState, create_trial
from ray.tune.search import Searcher

from orchestrator._scheduler import RUNG_KEY, is_rung
from searchspace import SlimtuneError

log = logging.getLogger(__name__)

TRIAL_NUMBER_KEY = "trial_number"
STATE_FORMAT = "slimtune.searcher-state"
STATE_VERSION = 1
# The states a saved trial may be in (PRUNED: stopped early at a rung); WAITING never occurs in
# an ask/tell study of ours.
_STATES = {
    "COMPLETE": TrialState.COMPLETE,
    "FAIL": TrialState.FAIL,
    "PRUNED": TrialState.PRUNED,
    "RUNNING": TrialState.RUNNING,
}


class SearcherStateDamaged(SlimtuneError):
    """A saved searcher state cannot be read back (truncated, garbage, or not this search's)."""


class OptunaAskTell(Searcher):
    """Propose configs from ``study`` over ``distributions``; at most ``max_trials`` of them."""

    def __init__(
        self,
        study: optuna.Study,
        distributions: Mapping[str, BaseDistribution],
        metrics: Sequence[str],
        *,
        max_trials: int,
        cover: Sequence[Mapping[str, Any]] = (),
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
        # The combinations of ``sampler.cover`` not yet asked: each is enqueued just before an
        # ask, so the study never holds a WAITING trial (nothing of it to save or restore).
        self._cover = [dict(point) for point in cover]

    @property
    def study(self) -> optuna.Study:
        return self._study

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self._asked >= self._max_trials:
            # Ray's sentinel for "no more trials" is a str, though the base class types a dict.
            return Searcher.FINISHED  # type: ignore[return-value]
        if self._cover:
            self._study.enqueue_trial(self._cover.pop(0))
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

    # Ray Tune names the file from this template (``searcher-state-<session>.json``): the
    # format shows in its name, and a planted ``.pkl`` is never looked at.
    CKPT_FILE_TMPL = "searcher-state-{}.json"

    def save(self, checkpoint_path: str) -> None:
        """Ray Tune checkpoints the searcher with the experiment: every trial asked so far (its
        number, parameters, state, values) and the Ray trial ids still running, as JSON."""
        trials = [_trial_json(t) for t in self._study.get_trials(deepcopy=False)]
        live = {trial_id: trial.number for trial_id, trial in self._live.items()}
        state = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "asked": self._asked,
            "trials": trials,
            "live": live,
        }
        Path(checkpoint_path).write_text(json.dumps(state, allow_nan=False))

    def restore(self, checkpoint_path: str) -> None:
        """Replay a state :meth:`save` wrote into a fresh study with this searcher's sampler and
        directions. Raises :class:`SearcherStateDamaged` for a file that is not such a state."""
        state = read_state(checkpoint_path, self._distributions)
        study = optuna.create_study(
            directions=self._study.directions,
            sampler=self._study.sampler,
            study_name=self._study.study_name,
        )
        for t in state["trials"]:
            study.add_trial(
                create_trial(
                    state=_STATES[t["state"]],
                    params=t["params"],
                    distributions={k: self._distributions[k] for k in t["params"]},
                    values=t["values"],
                    user_attrs=t["user_attrs"],
                )
            )
        frozen = study.get_trials(deepcopy=False)
        # A combination a trial already asked (finished, failed or running) is covered.
        self._cover = [p for p in self._cover if not any(_holds(t.params, p) for t in frozen)]
        self._study = study
        self._asked = state["asked"]
        self._live = {
            tid: optuna.Trial(study, frozen[n]._trial_id) for tid, n in state["live"].items()
        }


def _trial_json(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {
        "number": trial.number,
        "state": trial.state.name,
        "params": trial.params,
        "values": trial.values,
        "user_attrs": trial.user_attrs,
    }


def read_state(path: str | Path, distributions: Mapping[str, BaseDistribution]) -> dict[str, Any]:
    """The searcher state in ``path``, checked: JSON of this format, trials numbered 0..n-1 in
    order, known states, values only on complete trials (finite, one per objective is not
    checked here: the study's tell does), parameters inside ``distributions``, and live Ray
    trials pointing at running ones. Raises :class:`SearcherStateDamaged` naming the file."""
    path = Path(path)
    try:
        state = json.loads(path.read_text())
        problem = _state_problem(state, distributions)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        problem = f"it is not valid JSON ({type(exc).__name__}: {str(exc)[:200]})"
    if problem:
        raise SearcherStateDamaged(
            f"the saved searcher state {path} is damaged: {problem}. --resume cannot continue "
            "the search from it. Fix: restore the file from a backup, or start a new search "
            "without --resume (the trials recorded so far stay in MLflow)."
        )
    return dict(state)


def _state_problem(state: Any, distributions: Mapping[str, BaseDistribution]) -> str:
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        return f"it is not a {STATE_FORMAT} file"
    if state.get("version") != STATE_VERSION:
        return f"its version {state.get('version')!r} is not {STATE_VERSION}"
    trials, live, asked = state.get("trials"), state.get("live"), state.get("asked")
    if not isinstance(trials, list) or not isinstance(live, dict) or asked != len(trials):
        return "its 'trials', 'live' and 'asked' entries do not agree"
    for i, t in enumerate(trials):
        problem = _trial_problem(i, t, distributions)
        if problem:
            return problem
    running = {t["number"] for t in trials if t["state"] == "RUNNING"}
    if not all(isinstance(n, int) and n in running for n in live.values()):
        return f"its live trials {live} are not all running trials"
    return ""


def _trial_problem(i: int, t: Any, distributions: Mapping[str, BaseDistribution]) -> str:
    if not isinstance(t, dict) or t.get("number") != i or t.get("state") not in _STATES:
        return f"trial entry {i} is not trial number {i} with a known state"
    params, values = t.get("params"), t.get("values")
    if not isinstance(params, dict) or not isinstance(t.get("user_attrs"), dict):
        return f"trial {i} has no params or user_attrs mapping"
    for name, value in params.items():
        dist = distributions.get(name)
        try:
            inside = dist is not None and dist._contains(dist.to_internal_repr(value))
        except (TypeError, ValueError):
            inside = False
        if not inside:
            return f"trial {i}'s {name}={value!r} is not in the search space"
    complete = t["state"] == "COMPLETE"
    finite = isinstance(values, list) and _finite_numbers(values)
    if complete != isinstance(values, list) or (complete and not finite):
        return f"trial {i} ({t['state']}) has values {values!r}"
    return ""


def _finite_numbers(values: list[Any]) -> bool:
    return all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    )


def _objective_values(result: dict[str, Any] | None, metrics: Sequence[str]) -> list[float] | None:
    if not result:
        return None
    try:
        values = [float(result[m]) for m in metrics]
    except (KeyError, TypeError, ValueError):
        return None
    return values if all(math.isfinite(v) for v in values) else None


def _holds(params: Mapping[str, Any], point: Mapping[str, Any]) -> bool:
    return all(name in params and params[name] == value for name, value in point.items())
