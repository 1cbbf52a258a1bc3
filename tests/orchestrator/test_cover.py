"""``sampler.cover``: the first trials of a search take every combination of the covered
categorical knobs, whatever the sampler, and a resumed search does not repeat the ones asked."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from orchestrator import OptunaAskTell, build_sampler
from searchspace import ConfigError, cover_points, parse_spec, to_distributions

CONFIG = """
experiment: x
task: digits
trials: {trials}
space:
  bits: {{choices: [3, 4, 8, 16, 32]}}
  pruning: {{choices: [unstructured, structured]}}
  sparsity: {{low: 0.0, high: 0.75}}
sampler: {{name: {sampler}, seed: 0, startup_trials: 2, cover: [bits, pruning]}}
"""
PAIRS = {(b, p) for b in (3, 4, 8, 16, 32) for p in ("unstructured", "structured")}


def _searcher(trials: int, sampler: str = "tpe") -> OptunaAskTell:
    spec = parse_spec(CONFIG.format(trials=trials, sampler=sampler))
    study = optuna.create_study(directions=spec.directions, sampler=build_sampler(spec.sampler))
    return OptunaAskTell(
        study,
        to_distributions(spec.space),
        spec.metric_names,
        max_trials=spec.trials,
        cover=cover_points(spec.space, spec.sampler.cover),
    )


def _result(i: int) -> dict[str, float]:
    return {"accuracy": 0.5 + 0.01 * i, "size_gzip_bytes": 1e5 - i, "latency_ms": 1.0}


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "random"])
def test_the_first_trials_take_every_pair_and_the_sampler_draws_the_rest(sampler: str) -> None:
    s = _searcher(12, sampler)
    configs = []
    for i in range(12):
        cfg = s.suggest(f"t{i}")
        assert isinstance(cfg, dict)
        configs.append(cfg)
        s.on_trial_complete(f"t{i}", _result(i))
    assert {(c["bits"], c["pruning"]) for c in configs[:10]} == PAIRS
    assert all(isinstance(c["bits"], int) for c in configs)
    # The knobs not covered are the sampler's: they vary across the covered trials.
    assert len({c["sparsity"] for c in configs[:10]}) >= 5
    assert all(0.0 <= c["sparsity"] <= 0.75 for c in configs)


def test_a_restored_searcher_covers_only_the_pairs_not_yet_asked(tmp_path: Path) -> None:
    first = _searcher(12)
    asked = [first.suggest(f"t{i}") for i in range(4)]
    first.on_trial_complete("t0", _result(0))
    first.on_trial_complete("t1", None, error=True)  # failed: still asked, not asked again
    path = tmp_path / "searcher-state-x.json"
    first.save(str(path))
    restored = _searcher(12)
    restored.restore(str(path))
    rest = [restored.suggest(f"t{i}") for i in range(4, 12)]
    pairs = [(c["bits"], c["pruning"]) for c in asked + rest]  # type: ignore[index]
    assert set(pairs[:10]) == PAIRS and len(set(pairs[:10])) == 10


def test_cover_needs_a_trial_per_combination() -> None:
    with pytest.raises(ConfigError, match=r"5 bits x 2 pruning = 10.*trials=6.*at least 10"):
        parse_spec(CONFIG.format(trials=6, sampler="tpe"))


@pytest.mark.parametrize(
    ("cover", "message"),
    [
        ("[sparsity]", r"space.sparsity is a range.*\{choices: \[\.\.\.\]\}"),
        ("[bitz]", r"'bitz' is none of them; use names from"),
        ("[bits, bits]", r"must not repeat a knob"),
    ],
)
def test_cover_names_listed_knobs_once(cover: str, message: str) -> None:
    text = CONFIG.format(trials=12, sampler="tpe").replace(
        "cover: [bits, pruning]", "cover: " + cover
    )
    with pytest.raises(ConfigError, match=message) as info:
        parse_spec(text)
    assert "sampler" in str(info.value)
