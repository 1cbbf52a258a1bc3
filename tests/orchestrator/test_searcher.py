from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from orchestrator import OptunaAskTell, build_sampler
from orchestrator._searcher import TRIAL_NUMBER_KEY, SearcherStateDamaged, read_state
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


def _four_asked_two_told(tmp_path: Path) -> tuple[OptunaAskTell, Path]:
    s = _searcher(max_trials=6)
    for i in range(4):
        s.suggest(f"t{i}")
    s.on_trial_complete("t0", {"accuracy": 0.9, "size_gzip_bytes": 1e5, "latency_ms": 0.5})
    s.on_trial_complete("t2", None, error=True)
    path = tmp_path / "searcher-state-x.json"
    s.save(str(path))
    return s, path


def test_saved_state_is_json_and_a_restored_searcher_continues_the_study(tmp_path: Path) -> None:
    saved, path = _four_asked_two_told(tmp_path)
    state = json.loads(path.read_text())
    assert state["asked"] == 4 and state["live"] == {"t1": 1, "t3": 3}
    restored = _searcher(max_trials=6)
    restored.restore(str(path))
    before = [(t.number, t.state, t.values, t.params) for t in saved.study.trials]
    assert [(t.number, t.state, t.values, t.params) for t in restored.study.trials] == before
    assert restored.study.trials[2].user_attrs["fail_reason"] == "error"
    # The trials that were running when the state was saved are told to the restored study...
    restored.on_trial_complete("t1", {"accuracy": 0.8, "size_gzip_bytes": 5e4, "latency_ms": 0.4})
    restored.on_trial_complete("t3", None, error=True)
    assert restored.study.trials[1].values == [0.8, 5e4, 0.4]
    assert restored.study.trials[3].state == TrialState.FAIL
    # ...and asking goes on from the saved count: two more, numbered after the saved ones.
    numbers = [restored.suggest(t) for t in ("t4", "t5")]
    assert [n[TRIAL_NUMBER_KEY] for n in numbers] == [4, 5]  # type: ignore[index]
    assert restored.suggest("t6") == "FINISHED"


def test_a_planted_pickle_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    # Under the name Ray Tune's default template gives, and under ours.
    (tmp_path / "searcher-state-planted.pkl").write_bytes(pickle.dumps(Payload()))
    s = _searcher()
    with pytest.raises(RuntimeError, match="unable to find checkpoint"):
        s.restore_from_dir(str(tmp_path))
    (tmp_path / "searcher-state-planted.json").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(SearcherStateDamaged, match=r"searcher-state-planted\.json is damaged"):
        s.restore_from_dir(str(tmp_path))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda text: text[: len(text) // 2], "not valid JSON"),
        (lambda text: "\x00garbage", "not valid JSON"),
        (lambda text: text.replace('"asked": 4', '"asked": 7'), "do not agree"),
        (lambda text: text.replace('"number": 1', '"number": 9'), "not trial number 1"),
        (lambda text: text.replace('"FAIL"', '"BOGUS"'), "known state"),
        (lambda text: json.dumps({"format": "other"}), "not a slimtune.searcher-state"),
    ],
)
def test_a_damaged_state_is_refused_naming_the_file_and_the_fix(
    tmp_path: Path, damage: Any, problem: str
) -> None:
    _, path = _four_asked_two_told(tmp_path)
    path.write_text(damage(path.read_text()))
    with pytest.raises(SearcherStateDamaged) as err:
        _searcher().restore(str(path))
    assert str(path) in str(err.value) and problem in str(err.value)
    assert "without --resume" in str(err.value)


def test_a_saved_value_outside_the_space_is_refused(tmp_path: Path) -> None:
    _, path = _four_asked_two_told(tmp_path)
    state = json.loads(path.read_text())
    state["trials"][0]["params"]["bits"] = 3
    path.write_text(json.dumps(state))
    with pytest.raises(SearcherStateDamaged, match="bits=3 is not in the search space"):
        read_state(path, to_distributions(SPEC.space))


def test_a_trial_stopped_early_is_saved_and_restored_pruned(tmp_path: Path) -> None:
    s = _searcher(max_trials=3)
    s.suggest("t0")
    s.on_trial_complete("t0", {"rung_epoch": 1, "rung_accuracy": 0.5})  # its last report: a rung
    path = tmp_path / "searcher-state-x.json"
    s.save(str(path))
    assert json.loads(path.read_text())["trials"][0]["state"] == "PRUNED"
    restored = _searcher(max_trials=3)
    restored.restore(str(path))
    trial = restored.study.trials[0]
    assert trial.state == TrialState.PRUNED and trial.user_attrs["pruned_at_epoch"] == 1
