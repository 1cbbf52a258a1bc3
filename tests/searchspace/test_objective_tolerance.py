"""The objectives' ``tolerance`` (noise-aware dominance) and the knobs a space varies."""

from __future__ import annotations

from pathlib import Path

import pytest

from searchspace import ConfigError, load_spec


def _write(tmp_path: Path, objectives: str, space: str = "{}") -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(f"experiment: x\ntask: digits\nobjectives:\n{objectives}\nspace: {space}\n")
    return path


def test_tolerance_defaults_to_auto_and_takes_exact_or_a_relative_number(tmp_path: Path) -> None:
    spec = load_spec(
        _write(
            tmp_path,
            "  - {metric: accuracy, direction: maximize}\n"
            "  - {metric: size_bytes, direction: minimize, tolerance: exact}\n"
            "  - {metric: latency_ms, direction: minimize, tolerance: 0.05}",
        )
    )
    assert [o.tolerance for o in spec.objectives] == ["auto", "exact", 0.05]
    assert [o.tolerance_text() for o in spec.objectives] == ["auto", "exact", "0.05"]


@pytest.mark.parametrize("bad", ["2", "-0.1", "loose", "true", ".nan"])
def test_a_bad_tolerance_names_the_field_the_value_and_the_fix(tmp_path: Path, bad: str) -> None:
    path = _write(tmp_path, f"  - {{metric: latency_ms, direction: minimize, tolerance: {bad}}}")
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    text = str(err.value)
    assert "objectives.0.tolerance" in text
    assert "tolerance must be auto, exact, or a relative number in [0, 1)" in text


def test_varying_knobs_are_read_from_the_space(tmp_path: Path) -> None:
    spec = load_spec(
        _write(
            tmp_path,
            "  - {metric: accuracy, direction: maximize}",
            "{lr: 0.001, batch_size: {choices: [32]}, pruning: {choices: [unstructured, "
            "structured]}, distill_weight: {low: 0.0, high: 0.5}, quant_scheme: {choices: "
            "[qat, ptq]}, bits: {choices: [8, 32]}}",
        )
    )
    # sparsity keeps its default range; lr and batch_size are fixed.
    assert spec.space.varying_knobs() == [
        "sparsity",
        "bits",
        "pruning",
        "distill_weight",
        "quant_scheme",
    ]
