from __future__ import annotations

from pathlib import Path

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from searchspace import (
    ConfigError,
    SearchSpec,
    TrialParams,
    load_spec,
    parse_spec,
    to_distributions,
)

HEAD = "experiment: x\ntask: digits\n"  # the two required fields

ROOT = Path(__file__).resolve().parents[2]


def _err(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_spec(text, source="c.yaml")
    return info.value


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")))
def test_every_example_config_loads(path: Path) -> None:
    spec = load_spec(path)
    assert spec.trials >= 1 and spec.objectives


def test_minimal_config_gets_documented_defaults() -> None:
    spec = parse_spec(HEAD)
    assert spec.task == "digits"
    assert spec.metric_names == ["accuracy", "size_gzip_bytes", "latency_ms"]
    assert spec.directions == ["maximize", "minimize", "minimize"]
    assert spec.sampler.name == "tpe"


def test_distributions_keep_integer_knobs_integer() -> None:
    spec = parse_spec(
        HEAD + "space:\n  lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n"
        "  batch_size: {choices: [16, 64]}\n  sparsity: 0.5\n  bits: 8\n"
    )
    d = to_distributions(spec.space)
    assert d["lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert d["batch_size"] == CategoricalDistribution([16, 64])
    assert all(isinstance(c, int) for c in d["batch_size"].choices)  # type: ignore[attr-defined]
    assert d["sparsity"] == CategoricalDistribution([0.5])
    assert d["bits"] == CategoricalDistribution([8])


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        (HEAD + "space:\n  lr: {low: 0.1, high: 0.01}\n", "space.lr", "low < high"),
        (HEAD + "space:\n  lr: {low: 0, high: 0.1, log: true}\n", "space.lr", "low > 0"),
        (HEAD + "space:\n  sparsity: 1.0\n", "space.sparsity", "[0, 1)"),
        (HEAD + "space:\n  sparsity: {low: 0.5, high: 1.2}\n", "space.sparsity", "[0, 1)"),
        (HEAD + "space:\n  bits: {choices: [8, 12]}\n", "space.bits", "one of"),
        (HEAD + "space:\n  batch_size: 0\n", "space.batch_size", ">= 1"),
        (HEAD + "space:\n  batch_size: {low: 8, high: 64}\n", "space.batch_size", "range"),
        (HEAD + "trials: 0\n", "trials", "greater than or equal to 1"),
        (HEAD + "trails: 3\n", "trails", "did you mean 'trials'"),
        (HEAD + "sampler: {name: cmaes}\n", "sampler.name", "'tpe'"),
        (HEAD + "objectives: []\n", "objectives", "at least one objective"),
        (
            HEAD + "objectives:\n  - {metric: latency_ms, direction: maximize}\n",
            "objectives.0",
            "must be minimized",
        ),
        (
            HEAD + "objectives:\n  - {metric: acc, direction: maximize}\n",
            "objectives.0",
            "unknown metric",
        ),
        ("trials: 3\n", "experiment", "required"),
        (HEAD + "resources: {cpu: 0}\n", "resources.cpu", "greater than 0"),
    ],
)
def test_invalid_fields_are_named_with_rule_and_fix(text: str, field: str, words: str) -> None:
    err = _err(text)
    assert err.field == field
    msg = str(err)
    assert words in msg
    assert msg.startswith("c.yaml")
    assert "Fix:" in msg


@pytest.mark.parametrize("text", ["A:\n", HEAD + "Range: 1\n", "Choices: [1]\n"])
def test_capitalised_unknown_keys_are_named(text: str) -> None:
    # Regression (found by hypothesis): a key starting with a capital letter was dropped from
    # the error path like a union branch name, and the loader crashed with IndexError.
    err = _err(text)
    assert err.field in ("A", "Range", "Choices", "experiment")


def test_error_names_the_line() -> None:
    err = _err(HEAD + "trials: 5\nspace:\n  bits: {choices: [8, 99]}\n")
    assert err.line == 5


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "experiment: [x\n", "42\n"])
def test_non_mapping_or_broken_yaml_is_a_config_error(text: str) -> None:
    _err(text)


def test_yaml_tags_are_never_constructed() -> None:
    err = _err("experiment: !!python/object/apply:os.system ['echo hi']\n")
    assert err.field == "<yaml>"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must exist"):
        load_spec(tmp_path / "nope.yaml")


def test_trial_params_validate_themselves() -> None:
    p = TrialParams.from_dict({"lr": "0.001", "batch_size": 64.0, "sparsity": 0.5, "bits": 8})
    assert p == TrialParams(lr=0.001, batch_size=64, sparsity=0.5, bits=8)
    with pytest.raises(ValueError, match="sparsity"):
        TrialParams(lr=0.1, batch_size=1, sparsity=1.0, bits=8)
    with pytest.raises(ValueError, match="bits"):
        TrialParams(lr=0.1, batch_size=1, sparsity=0.0, bits=12)


def test_spec_is_frozen() -> None:
    spec = parse_spec(HEAD)
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError on frozen models
        spec.trials = 3  # type: ignore[misc]
    assert isinstance(spec, SearchSpec)


def test_pruning_knob_defaults_to_unstructured_and_is_a_string_categorical() -> None:
    spec = parse_spec(HEAD)
    d = to_distributions(spec.space)
    assert d["pruning"] == CategoricalDistribution(["unstructured"])
    assert d["distill_weight"] == CategoricalDistribution([0.0])
    assert d["distill_temperature"] == CategoricalDistribution([2.0])
    spec = parse_spec(
        HEAD + "space:\n  pruning: {choices: [unstructured, structured]}\n"
        "  bits: {choices: [8, 16, 32]}\n  distill_weight: {low: 0.0, high: 0.5}\n"
    )
    d = to_distributions(spec.space)
    assert d["pruning"] == CategoricalDistribution(["unstructured", "structured"])
    assert d["bits"] == CategoricalDistribution([8, 16, 32])
    assert d["distill_weight"] == FloatDistribution(0.0, 0.5)
    fixed = parse_spec(HEAD + "space:\n  pruning: structured\n")
    assert to_distributions(fixed.space)["pruning"] == CategoricalDistribution(["structured"])


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("pruning: {choices: [channel]}", "space.pruning", "pruning must be one of"),
        ("pruning: filter", "space.pruning", "'unstructured', 'structured'"),
        ("pruning: 3", "space.pruning", "string"),
        ("bits: {choices: [structured]}", "space.bits", "numbers, not names"),
        ("sparsity: {choices: [0.5, unstructured]}", "space.sparsity", "numbers, not names"),
        ("distill_weight: 1.5", "space.distill_weight", "[0, 1]"),
        ("distill_temperature: 0", "space.distill_temperature", "> 0"),
    ],
)
def test_name_knob_errors(text: str, field: str, words: str) -> None:
    err = _err(HEAD + f"space:\n  {text}\n")
    assert err.field == field
    assert words in str(err)


def test_trial_params_pruning_and_distillation() -> None:
    p = TrialParams.from_dict({"lr": 0.01, "batch_size": 32, "sparsity": 0.5, "bits": 16})
    assert (p.pruning, p.distill_weight, p.distill_temperature) == ("unstructured", 0.0, 2.0)
    d = {**p.to_dict(), "pruning": "structured", "distill_weight": 0.5}
    assert TrialParams.from_dict(d).pruning == "structured"
    with pytest.raises(ValueError, match="pruning must be one of"):
        TrialParams(lr=0.1, batch_size=1, sparsity=0.0, bits=8, pruning="channel")
