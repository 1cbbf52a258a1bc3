"""The knobs every trial sets (``Space``): their kinds, ranges, allowed values and the rules
between them, and the constants that name the values."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import (
    Discriminator,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from searchspace._pruning import PRUNING_SCOPES
from searchspace._strict import Strict

# Bit-widths a trial can produce (docs/quantization.md). 32: fp32 ONNX; 16: fp16 ONNX (ORT's CPU
# provider computes it in fp32); 8: real int8 QDQ in ONNX Runtime; 4: real int4 weights
# (MatMulNBits for Linear, int4 DequantizeLinear for Conv); 2, 3, 5-7: fake-quant fine-tuning,
# exported with baked weights and tagged artifact=simulated.
SUPPORTED_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 16, 32)

# Pruning schemes. unstructured: global magnitude with Zhu & Gupta's gradual cubic schedule;
# structured: channels/neurons physically removed (torch-pruning), sparsity = channel ratio.
PRUNING_SCHEMES: tuple[str, ...] = ("unstructured", "structured")

# Quantization schemes (docs/quantization.md). qat: fake-quantized fine-tuning on the exported
# weight grid; ptq: fine-tuning in float, then the weights rounded to that grid and the artifact
# quantized (int8 activations calibrated) after training. 16 and 32 bits ignore the scheme.
QUANT_SCHEMES: tuple[str, ...] = ("qat", "ptq")

# Compression plans (docs/quantization.md, "Per-layer plans"). uniform: one bit-width and one
# sparsity for every layer; mixed: each layer's format chosen by the allocator under
# space.budget (a fraction of the dense artifact's size), from measured sensitivities.
PLAN_KINDS: tuple[str, ...] = ("uniform", "mixed")

# What a mixed plan's budget is a fraction of: the dense artifact's size in bytes, or its
# latency in ONNX Runtime (predicted from a per-layer latency table measured by the meter).
BUDGET_METRICS: tuple[str, ...] = ("size", "latency")

# Bit-widths with no ONNX Runtime format: they exist only as fake-quant fine-tuning (qat).
SIMULATED_BITS: tuple[int, ...] = (2, 3, 5, 6, 7)

KNOBS = (
    "lr",
    "batch_size",
    "sparsity",
    "bits",
    "pruning",
    "distill_weight",
    "distill_temperature",
    "quant_scheme",
    "pruning_scope",
    "plan",
    "budget",
    "budget_metric",
)

# Knobs whose values are names (strings), not numbers.
NAME_KNOBS = ("pruning", "quant_scheme", "pruning_scope", "plan", "budget_metric")


class FloatRange(Strict):
    """A continuous knob: uniform on [low, high], or log-uniform when ``log`` is true."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> FloatRange:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(
                f"low and high must be finite numbers (got low={self.low}, high={self.high})"
            )
        if not self.low < self.high:
            raise ValueError(
                f"low < high must hold (got low={self.low}, high={self.high}); "
                "for a fixed value write the number alone"
            )
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got low={self.low})")
        return self


class Choice(Strict):
    """A categorical knob: one of a list of values (numbers; names for the name knobs such as
    ``pruning``, which each knob's validator checks)."""

    choices: list[int | float | str]

    @field_validator("choices")
    @classmethod
    def _non_empty_unique(cls, v: list[int | float | str]) -> list[int | float | str]:
        if not v:
            raise ValueError("choices must list at least one value")
        if len(set(v)) != len(v):
            raise ValueError(f"choices must not repeat a value (got {v})")
        return v


def _knob_kind(v: Any) -> str:
    if isinstance(v, dict):
        return "Choices" if "choices" in v else "Range"
    if isinstance(v, FloatRange):
        return "Range"
    if isinstance(v, Choice):
        return "Choices"
    return "Fixed"


# A knob is a range {low, high, log}, a list {choices: [...]}, or a plain number (fixed).
# The explicit discriminator keeps error paths clean (space.lr.low, not every union branch).
Knob = Annotated[
    Annotated[FloatRange, Tag("Range")]
    | Annotated[Choice, Tag("Choices")]
    | Annotated[float, Tag("Fixed")],
    Discriminator(_knob_kind),
]

# A knob whose values are names: a list {choices: [...]} or one name (fixed).
NameKnob = Annotated[
    Annotated[Choice, Tag("Choices")] | Annotated[str, Tag("Fixed")],
    Discriminator(_knob_kind),
]


class Space(Strict):
    """The knobs every trial sets. A plain number (or name) fixes a knob."""

    lr: Knob = FloatRange(low=1e-4, high=1e-2, log=True)
    batch_size: Knob = Choice(choices=[32, 64, 128])
    sparsity: Knob = FloatRange(low=0.0, high=0.9)
    bits: Knob = Choice(choices=[8, 32])
    pruning: NameKnob = Choice(choices=["unstructured"])
    # Distillation from the dense model during fine-tuning; weight 0 turns it off.
    distill_weight: Knob = 0.0
    distill_temperature: Knob = 2.0
    # Declared after bits: its validator checks the bit-widths the scheme can produce.
    quant_scheme: NameKnob = Choice(choices=["qat"])
    # Unstructured pruning's scope: global (one threshold, each layer capped) or layer.
    pruning_scope: NameKnob = Choice(choices=["global"])
    # Per-layer plans: uniform (every layer at `bits`) or mixed (the allocator picks each
    # layer's format so that the predicted artifact is at most `budget` x the dense one's size
    # or latency, as `budget_metric` says).
    plan: NameKnob = Choice(choices=["uniform"])
    budget: Knob = 0.5
    budget_metric: NameKnob = Choice(choices=["size"])

    @field_validator("plan", "pruning", "pruning_scope", "budget_metric")
    @classmethod
    def _names(cls, v: Any, info: ValidationInfo) -> Any:
        allowed, example = _ALLOWED_NAMES[str(info.field_name)]
        return _check_names(v, str(info.field_name), allowed, example)

    @field_validator("budget")
    @classmethod
    def _budget(cls, v: Any) -> Any:
        return _check_knob(
            v,
            lambda x: 0.0 < x <= 1.0,
            "budget must be in (0, 1] (a fraction of the dense artifact's size or latency)",
        )

    @field_validator("quant_scheme")
    @classmethod
    def _quant_scheme(cls, v: Any, info: ValidationInfo) -> Any:
        _check_names(v, "quant_scheme", QUANT_SCHEMES, "{choices: [qat, ptq]}")
        values = list(v.choices) if isinstance(v, Choice) else [v]
        bits = info.data.get("bits")  # absent when bits itself is invalid
        if "ptq" in values and bits is not None:
            widths = list(bits.choices) if isinstance(bits, Choice) else [bits]
            simulated = sorted({int(b) for b in widths if int(b) in SIMULATED_BITS})
            if simulated:
                raise ValueError(
                    f"quant_scheme 'ptq' cannot produce bits {simulated}: post-training "
                    "quantization exports the real ONNX Runtime formats only (8 and 4 bits; 16 "
                    f"and 32 ignore the scheme), and bits {list(SIMULATED_BITS)} exist only as "
                    "fake-quant fine-tuning (qat)"
                )
        return v

    @field_validator("distill_weight")
    @classmethod
    def _distill_weight(cls, v: Any) -> Any:
        return _check_knob(v, lambda x: 0.0 <= x <= 1.0, "distill_weight must be in [0, 1]")

    @field_validator("distill_temperature")
    @classmethod
    def _distill_temperature(cls, v: Any) -> Any:
        return _check_knob(
            v, lambda x: x > 0 and math.isfinite(x), "distill_temperature must be > 0"
        )

    @field_validator("lr")
    @classmethod
    def _lr(cls, v: Any) -> Any:
        return _check_knob(v, lambda x: x > 0, "the learning rate must be > 0")

    @field_validator("batch_size")
    @classmethod
    def _batch_size(cls, v: Any) -> Any:
        return _check_knob(
            v,
            lambda x: x >= 1 and float(x).is_integer(),
            "the batch size must be a whole number >= 1",
            allow_range=False,
        )

    @field_validator("sparsity")
    @classmethod
    def _sparsity(cls, v: Any) -> Any:
        return _check_knob(v, lambda x: 0.0 <= x < 1.0, "sparsity must be in [0, 1)")

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: Any) -> Any:
        return _check_knob(
            v,
            lambda x: float(x).is_integer() and int(x) in SUPPORTED_BITS,
            f"bits must be one of {list(SUPPORTED_BITS)}",
            allow_range=False,
        )

    def knobs(self) -> dict[str, Knob | NameKnob]:
        return {name: getattr(self, name) for name in KNOBS}

    def varying_knobs(self) -> list[str]:
        """The knobs trials draw (a range, or two or more choices), in ``KNOBS`` order: what
        every view of a search shows next to each trial."""
        return [
            name
            for name, knob in self.knobs().items()
            if isinstance(knob, FloatRange) or (isinstance(knob, Choice) and len(knob.choices) > 1)
        ]

    def bit_widths(self) -> tuple[int, ...]:
        """The bit-widths trials can draw (``bits``' choices, or the one fixed width)."""
        values = self.bits.choices if isinstance(self.bits, Choice) else [self.bits]
        return tuple(int(v) for v in values if isinstance(v, int | float))  # never a range


# The name knobs without a rule of their own (quant_scheme has one): allowed names, an example.
_ALLOWED_NAMES: dict[str, tuple[tuple[str, ...], str]] = {
    "plan": (PLAN_KINDS, "{choices: [uniform, mixed]}"),
    "budget_metric": (BUDGET_METRICS, "{choices: [size, latency]}"),
    "pruning": (PRUNING_SCHEMES, "{choices: [unstructured, structured]}"),
    "pruning_scope": (PRUNING_SCOPES, "{choices: [global, layer]}"),
}


def _check_names(knob: Any, name: str, allowed: Sequence[str], example: str) -> Any:
    """A knob of names (one, or ``{choices: [...]}``): each must be one of ``allowed``."""
    values = list(knob.choices) if isinstance(knob, Choice) else [knob]
    bad = [x for x in values if x not in allowed]
    if bad:
        raise ValueError(f"{name} must be one of {list(allowed)} (got {bad[0]!r}); e.g. {example}")
    return knob


def _check_knob(knob: Any, ok: Any, rule: str, *, allow_range: bool = True) -> Any:
    if isinstance(knob, FloatRange):
        if not allow_range:
            raise ValueError(
                f"a range is not allowed here: {rule}; list values as {{choices: [...]}}"
            )
        values: list[Any] = [knob.low, knob.high]
    elif isinstance(knob, Choice):
        values = list(knob.choices)
    else:
        values = [knob]
    names = [v for v in values if isinstance(v, str)]
    if names:
        raise ValueError(f"{rule}; this knob takes numbers, not names (got {names[0]!r})")
    bad = [v for v in values if not ok(v)]
    if bad:
        raise ValueError(f"{rule} (got {bad[0]!r})")
    return knob
