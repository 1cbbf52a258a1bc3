"""``--resume``'s checks of a saved search state, on real files: intact, trusted, or refused."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import optuna
import pytest

from orchestrator import OptunaAskTell, build_sampler
from orchestrator._searcher import SearcherStateDamaged
from orchestrator._state import SavedStateDamaged, SavedStateNotTrusted, check_saved_state
from searchspace import SamplerSpec, parse_spec, to_distributions

SPEC = parse_spec("experiment: x\n")
SPACE = to_distributions(SPEC.space)


def _saved_state(tmp_path: Path) -> Path:
    """A directory laid out as Ray Tune saves a search: its pickles, its JSON, our searcher."""
    storage = tmp_path / "storage"
    exp = storage / "search-abc"
    (exp / "trial_0").mkdir(parents=True)
    (exp / "tuner.pkl").write_bytes(pickle.dumps({"tuner": [1, 2.5, "x"]}))
    (exp / "search_gen_state-2026.json").write_bytes(pickle.dumps({"counter": 3}))
    (exp / "experiment_state-2026.json").write_text('{"trial_data": []}')
    (exp / "trial_0" / "result.json").write_text("{}")
    study = optuna.create_study(
        directions=SPEC.directions, sampler=build_sampler(SamplerSpec(name="random", seed=1))
    )
    searcher = OptunaAskTell(study, SPACE, SPEC.metric_names, max_trials=3)
    searcher.suggest("t0")
    searcher.save(str(exp / "searcher-state-2026.json"))
    for p in [storage, exp, *exp.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return exp


def test_an_intact_state_of_yours_passes(tmp_path: Path) -> None:
    check_saved_state(str(_saved_state(tmp_path)), SPACE)


@pytest.mark.parametrize(
    "name", ["tuner.pkl", "search_gen_state-2026.json", "experiment_state-2026.json"]
)
def test_a_truncated_file_is_refused_naming_it(tmp_path: Path, name: str) -> None:
    exp = _saved_state(tmp_path)
    data = (exp / name).read_bytes()
    (exp / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(SavedStateDamaged) as err:
        check_saved_state(str(exp), SPACE)
    assert f"{exp / name} is damaged" in str(err.value) and "without --resume" in str(err.value)


def test_a_damaged_searcher_state_is_refused(tmp_path: Path) -> None:
    exp = _saved_state(tmp_path)
    (exp / "searcher-state-2026.json").write_bytes(b"\x80\x04garbage")
    with pytest.raises(SearcherStateDamaged, match="searcher-state-2026"):
        check_saved_state(str(exp), SPACE)


def test_checking_a_planted_pickle_does_not_run_it(tmp_path: Path) -> None:
    exp = _saved_state(tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    (exp / "tuner.pkl").write_bytes(pickle.dumps(Payload()))
    check_saved_state(str(exp), SPACE)  # well-formed: only its owner and modes protect it
    assert not marker.exists()


@pytest.mark.parametrize(
    ("where", "mode", "problem"),
    [
        (".", 0o777, "writable by every user"),
        ("tuner.pkl", 0o666, "writable by every user"),
        ("trial_0/result.json", 0o646, "writable by every user"),
        ("..", 0o757, "writable by every user"),
    ],
)
def test_a_state_others_may_write_is_refused(
    tmp_path: Path, where: str, mode: int, problem: str
) -> None:
    exp = _saved_state(tmp_path)
    (exp / where).chmod(mode)
    with pytest.raises(SavedStateNotTrusted) as err:
        check_saved_state(str(exp), SPACE)
    assert problem in str(err.value) and "chmod -R go-w" in str(err.value)
    assert "trusted like code" in str(err.value)


@pytest.mark.skipif(os.getuid() != 0, reason="changing a file's owner needs root")
def test_a_state_file_of_another_user_or_a_shared_group_is_refused(tmp_path: Path) -> None:
    exp = _saved_state(tmp_path)
    os.chown(exp / "tuner.pkl", 12345, -1)
    with pytest.raises(SavedStateNotTrusted, match="owned by uid 12345"):
        check_saved_state(str(exp), SPACE)
    os.chown(exp / "tuner.pkl", os.getuid(), 12345)
    (exp / "tuner.pkl").chmod(0o664)
    with pytest.raises(SavedStateNotTrusted, match="writable by group gid 12345"):
        check_saved_state(str(exp), SPACE)


def test_a_remote_or_missing_state_is_left_to_ray(tmp_path: Path) -> None:
    check_saved_state("s3://bucket/state/search-abc", SPACE)
    check_saved_state(str(tmp_path / "nowhere"), SPACE)
