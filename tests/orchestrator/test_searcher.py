from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from orchestrator import OptunaAskTell, build_sampler
from orchestrator._searcher import TRIAL_NUMBER_KEY
from searchspace import SamplerSpec, parse_spec, to_distributions

SPEC = parse_spec("experiment: x\ntask: digits\n")


def _searcher(max_trials: int = 5, sampler: str = "random") -> OptunaAskTell:
    study = optuna.create_study(
        directions=SPEC.directions,
        sampler=build_sampler(SamplerSpec(name=sampler, seed=1)),  # type: ignore[arg-type]
    )
    return OptunaAskTell(
        study, to_distributions(SPEC.space), SPEC.metric_names, max_trials=max_trials
    )


def test_suggestions_are_valid_points_with_trial_numbers() -> None:
    s = _searcher()
    cfgs = [s.suggest(f"t{i}") for i in range(3)]
    assert [c[TRIAL_NUMBER_KEY] for c in cfgs] == [0, 1, 2]  # type: ignore[index]
    for c in cfgs:
        assert c is not None
        assert 1e-4 <= c["lr"] <= 1e-2
        assert c["batch_size"] in (32, 64, 128) and isinstance(c["batch_size"], int)
        assert 0.0 <= c["sparsity"] <= 0.9
        assert c["bits"] in (8, 32)


def test_outcomes_are_told_to_the_study() -> None:
    s = _searcher()
    for i in range(4):
        s.suggest(f"t{i}")
    s.on_trial_complete("t0", {"accuracy": 0.9, "size_gzip_bytes": 1e5, "latency_ms": 0.5})
    s.on_trial_complete("t1", None, error=True)
    s.on_trial_complete("t2", {"accuracy": math.nan, "size_gzip_bytes": 1, "latency_ms": 1})
    s.on_trial_complete("t3", {"accuracy": 0.9})  # a metric missing
    states = [t.state for t in s.study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL, TrialState.FAIL]
    assert s.study.trials[0].values == [0.9, 1e5, 0.5]
    assert s.study.trials[1].user_attrs["fail_reason"] == "error"


def test_stops_after_max_trials() -> None:
    s = _searcher(max_trials=2)
    assert s.suggest("a") and s.suggest("b")
    assert s.suggest("c") == "FINISHED"


def test_unknown_trial_completion_is_ignored() -> None:
    _searcher().on_trial_complete("never-suggested", {"accuracy": 1.0})


def test_metric_count_must_match_directions() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    with pytest.raises(ValueError, match="one metric per direction"):
        OptunaAskTell(study, to_distributions(SPEC.space), ["accuracy"], max_trials=1)


@pytest.mark.parametrize("name", ["tpe", "nsga2", "gp", "random"])
def test_every_sampler_proposes_in_the_space(name: str) -> None:
    s = _searcher(max_trials=12, sampler=name)
    for i in range(12):
        cfg = s.suggest(f"t{i}")
        assert cfg is not None and 0.0 <= cfg["sparsity"] <= 0.9
        s.on_trial_complete(
            f"t{i}",
            {
                "accuracy": 1 - cfg["sparsity"] / 2,
                "size_gzip_bytes": 1e5 * (1 - cfg["sparsity"]),
                "latency_ms": 0.3 + cfg["lr"],
            },
        )
    assert len(s.study.best_trials) >= 1
