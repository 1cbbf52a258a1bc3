"""The quantization scheme knob (qat / ptq), its cross-field rule with bits, and the
quantization section (int8 format)."""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution

from searchspace import (
    INT8_FORMATS,
    SIMULATED_BITS,
    ConfigError,
    TrialParams,
    parse_spec,
    to_distributions,
)

HEAD = "experiment: x\ntask: digits\n"  # the two required fields


def test_defaults_keep_todays_behaviour() -> None:
    spec = parse_spec(HEAD)
    assert to_distributions(spec.space)["quant_scheme"] == CategoricalDistribution(["qat"])
    assert spec.quantization.int8_format == "auto"
    assert TrialParams.from_dict({"lr": 1e-3, "batch_size": 8, "sparsity": 0, "bits": 8}) == (
        TrialParams(lr=1e-3, batch_size=8, sparsity=0.0, bits=8, quant_scheme="qat")
    )


@pytest.mark.parametrize("bits", ["4", "8", "16", "32", "{choices: [4, 8, 16, 32]}"])
def test_ptq_goes_with_the_real_formats(bits: str) -> None:
    spec = parse_spec(HEAD + f"space:\n  bits: {bits}\n  quant_scheme: {{choices: [qat, ptq]}}\n")
    assert to_distributions(spec.space)["quant_scheme"] == CategoricalDistribution(["qat", "ptq"])


@pytest.mark.parametrize("bits", SIMULATED_BITS)
def test_ptq_cannot_produce_a_simulated_width(bits: int) -> None:
    text = HEAD + f"space:\n  bits: {{choices: [8, {bits}]}}\n  quant_scheme: ptq\n"
    with pytest.raises(ConfigError) as info:
        parse_spec(text, source="c.yaml")
    err = info.value
    assert err.field == "space.quant_scheme" and err.value == "ptq" and err.line == 5
    assert f"cannot produce bits [{bits}]" in err.rule and "fake-quant" in err.rule
    assert "remove 2, 3, 5, 6, 7 from space.bits" in err.fix
    # qat produces every width; the same bits with qat are fine.
    parse_spec(text.replace("ptq", "qat"))
    with pytest.raises(ValueError, match="ptq"):
        TrialParams(lr=1e-3, batch_size=8, sparsity=0.0, bits=bits, quant_scheme="ptq")


def test_unknown_scheme_and_format_are_named() -> None:
    with pytest.raises(ConfigError, match="quant_scheme must be one of") as info:
        parse_spec(HEAD + "space:\n  quant_scheme: awq\n")
    assert info.value.field == "space.quant_scheme"
    with pytest.raises(ConfigError) as info:
        parse_spec(HEAD + "quantization: {int8_format: int8}\n")
    assert info.value.field == "quantization.int8_format"
    assert all(name in info.value.fix for name in INT8_FORMATS)
    with pytest.raises(ValueError, match="quant_scheme"):
        TrialParams(lr=1e-3, batch_size=8, sparsity=0.0, bits=8, quant_scheme="awq")


@pytest.mark.parametrize("name", ["auto", *INT8_FORMATS])
def test_every_int8_format_is_accepted(name: str) -> None:
    spec = parse_spec(HEAD + f"quantization:\n  int8_format: {name}\n")
    assert spec.quantization.int8_format == name
