"""Typed, self-validating description of a search: knobs, objectives, sampler, budget, tracking."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from searchspace._early_stopping import EarlyStopping
from searchspace._latency import Latency
from searchspace._pruning import PRUNING_SCOPES, Pruning
from searchspace._secrets import CREDENTIALS_FIX, credentials_in
from searchspace._strict import Strict

# What one trial measures on its exported artifact, with each metric's natural direction.
METRICS: dict[str, Literal["maximize", "minimize"]] = {
    "accuracy": "maximize",
    "size_bytes": "minimize",
    "size_gzip_bytes": "minimize",
    "latency_ms": "minimize",
    "latency_p90_ms": "minimize",
}

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

# Bit-widths with no ONNX Runtime format: they exist only as fake-quant fine-tuning (qat).
SIMULATED_BITS: tuple[int, ...] = (2, 3, 5, 6, 7)

# int8 formats of ONNX Runtime's static QDQ quantization: activations (u8 or s8), int8 weights
# per output channel or per tensor; reduce-range: 7-bit weights. "auto" measures them.
# Listed from the most precise weights to the coarsest: auto prefers the first among ties.
Int8FormatSetting = Literal[
    "auto",
    "u8s8-per-channel",
    "s8s8-per-channel",
    "u8s8-per-channel-reduce-range",
    "u8s8-per-tensor",
    "s8s8-per-tensor",
]
INT8_FORMATS: tuple[str, ...] = tuple(f for f in get_args(Int8FormatSetting) if f != "auto")

# Fixes for fields whose generic fix (by section) would not help; the loader looks them up.
FIELD_FIXES: dict[str, str] = {
    "space.quant_scheme": "write quant_scheme as qat, ptq or {choices: [qat, ptq]}; ptq goes "
    "with bits 4, 8, 16, 32 only: remove 2, 3, 5, 6, 7 from space.bits, or keep quant_scheme: qat",
    "quantization.int8_format": "write int8_format: auto (measured once per machine) or one of "
    + ", ".join(INT8_FORMATS),
    "latency.resources": "name custom Ray resources that the latency meter's node has, each "
    "amount > 0, e.g. resources: {deploy_cpu: 1} (a node gets them from `ray start --resources "
    "'{\"deploy_cpu\": 1}'`); they need where: actor",
    "latency.cpus": "set cpus: 0 (the default: the meter reserves no CPU and trials pause while "
    "it measures) or the CPUs the latency actor reserves; it needs where: actor",
    "latency.max_repeats": "set max_repeats >= repeats, or leave it out (5 x repeats)",
    "early_stopping": "lower early_stopping.min_epochs below training.epochs, raise "
    "training.epochs, or set early_stopping.name: none",
    "early_stopping.name": "write name: mo-asha (multi-objective ASHA) or name: none",
    "early_stopping.min_epochs": "set min_epochs to a whole number below training.epochs "
    "(e.g. 1), or set early_stopping.name: none",
    "early_stopping.reduction_factor": "set reduction_factor to a whole number >= 2 (3 keeps "
    "the top third at each rung)",
    "early_stopping.skip_margin": "set skip_margin to an accuracy margin in [0, 1], or leave it "
    "out (two standard errors of the best accuracy)",
    "pruning.round_to": "set round_to to a whole number >= 1: 8 (the default) keeps widths "
    "multiples of 8, 1 keeps the exact ratio",
    "space.plan": "write plan as uniform, mixed or {choices: [uniform, mixed]}",
    "space.budget": "write budget as a fraction of the dense artifact's size in (0, 1], e.g. "
    "budget: 0.4 or {low: 0.25, high: 0.6}",
    "space.pruning_scope": "write pruning_scope as global, layer or {choices: [global, layer]}",
    "quantization.keep_float": "list module names of the model, e.g. keep_float: [gru, head]",
}

SAMPLERS = ("tpe", "nsga2", "gp", "random")

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
)

# Knobs whose values are names (strings), not numbers.
NAME_KNOBS = ("pruning", "quant_scheme", "pruning_scope", "plan")


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
    # layer's format so that the predicted artifact is at most `budget` x the dense one's).
    plan: NameKnob = Choice(choices=["uniform"])
    budget: Knob = 0.5

    @field_validator("plan")
    @classmethod
    def _plan(cls, v: Any) -> Any:
        values = list(v.choices) if isinstance(v, Choice) else [v]
        bad = [x for x in values if x not in PLAN_KINDS]
        if bad:
            raise ValueError(
                f"plan must be one of {list(PLAN_KINDS)} (got {bad[0]!r}); "
                "e.g. {choices: [uniform, mixed]}"
            )
        return v

    @field_validator("budget")
    @classmethod
    def _budget(cls, v: Any) -> Any:
        return _check_knob(
            v,
            lambda x: 0.0 < x <= 1.0,
            "budget must be in (0, 1] (a fraction of the dense artifact's size)",
        )

    @field_validator("quant_scheme")
    @classmethod
    def _quant_scheme(cls, v: Any, info: ValidationInfo) -> Any:
        values = list(v.choices) if isinstance(v, Choice) else [v]
        bad = [x for x in values if x not in QUANT_SCHEMES]
        if bad:
            raise ValueError(
                f"quant_scheme must be one of {list(QUANT_SCHEMES)} (got {bad[0]!r}); "
                "e.g. {choices: [qat, ptq]}"
            )
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

    @field_validator("pruning")
    @classmethod
    def _pruning(cls, v: Any) -> Any:
        values = list(v.choices) if isinstance(v, Choice) else [v]
        bad = [x for x in values if x not in PRUNING_SCHEMES]
        if bad:
            raise ValueError(
                f"pruning must be one of {list(PRUNING_SCHEMES)} (got {bad[0]!r}); "
                "e.g. {choices: [unstructured, structured]}"
            )
        return v

    @field_validator("pruning_scope")
    @classmethod
    def _pruning_scope(cls, v: Any) -> Any:
        values = list(v.choices) if isinstance(v, Choice) else [v]
        bad = [x for x in values if x not in PRUNING_SCOPES]
        if bad:
            raise ValueError(
                f"pruning_scope must be one of {list(PRUNING_SCOPES)} (got {bad[0]!r}); "
                "e.g. {choices: [global, layer]}"
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


# Metrics whose "auto" tolerance is zero: a file's bytes are exact.
EXACT_METRICS: tuple[str, ...] = ("size_bytes", "size_gzip_bytes")


class Objective(Strict):
    """One metric to optimize, its direction, and the tolerance within which two trials tie.

    ``tolerance`` (docs/noise.md): ``auto`` (the default) derives it from the measurement: for
    ``accuracy`` one validation sample; for latencies the two medians' 95 % intervals (from the
    block medians' CV and count) must not overlap; sizes are exact. ``exact`` (or 0) means no
    tolerance; a number in (0, 1) is relative, e.g. 0.05 = 5 % of the larger of the two values.
    """

    metric: str
    direction: Literal["maximize", "minimize"]
    tolerance: Literal["auto", "exact"] | float = "auto"

    @field_validator("tolerance", mode="before")
    @classmethod
    def _tolerance(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip() in ("auto", "exact"):
            return v.strip()
        number = isinstance(v, int | float) and not isinstance(v, bool)
        if number and math.isfinite(v) and 0 <= v < 1:
            return float(v)
        raise ValueError(
            f"tolerance must be auto, exact, or a relative number in [0, 1) such as 0.05 (5 % "
            f"of the larger of two values), got {v!r}; e.g. {{metric: latency_ms, direction: "
            "minimize, tolerance: auto}"
        )

    def tolerance_text(self) -> str:
        """The tolerance as the ``slimtune.tolerances`` tag writes it: auto, exact or a number."""
        if isinstance(self.tolerance, str):
            return self.tolerance
        return "exact" if self.tolerance == 0 else f"{self.tolerance:g}"

    @model_validator(mode="after")
    def _check(self) -> Objective:
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; choose one of {sorted(METRICS)}")
        if self.direction != METRICS[self.metric]:
            raise ValueError(
                f"metric {self.metric!r} must be {METRICS[self.metric]}d "
                f"(got direction={self.direction!r})"
            )
        return self


def _default_objectives() -> list[Objective]:
    return [
        Objective(metric="accuracy", direction="maximize"),
        Objective(metric="size_gzip_bytes", direction="minimize"),
        Objective(metric="latency_ms", direction="minimize"),
    ]


class SamplerSpec(Strict):
    """Which Optuna sampler proposes trials."""

    name: Literal["tpe", "nsga2", "gp", "random"] = "tpe"
    seed: int | None = 0
    # TPE/GP: trials proposed at random before the model kicks in.
    startup_trials: Annotated[int, Field(ge=1)] = 8
    # NSGA-II only.
    population_size: Annotated[int, Field(ge=2)] = 8
    # Categorical knobs whose every combination of choices the first trials take (the other
    # knobs drawn by the sampler): e.g. [bits, pruning] guarantees each (bits, pruning) pair
    # is tried. Checked against the space and the trial budget in SearchSpec (searchspace._cover).
    cover: list[str] = Field(default_factory=list)

    @field_validator("cover")
    @classmethod
    def _cover(cls, v: list[str]) -> list[str]:
        unknown = [name for name in v if name not in KNOBS]
        if unknown:
            raise ValueError(
                f"cover lists knobs of space, and {unknown[0]!r} is none of them; "
                f"use names from {list(KNOBS)}"
            )
        if len(set(v)) != len(v):
            raise ValueError(f"cover must not repeat a knob (got {v}); list each once")
        return v


class Resources(Strict):
    """What one trial reserves on a Ray node."""

    cpu: Annotated[float, Field(gt=0)] = 1.0
    gpu: Annotated[float, Field(ge=0)] = 0.0


class Training(Strict):
    """Fixed settings of every trial's fine-tuning."""

    epochs: Annotated[int, Field(ge=1, le=1000)] = 3


# Ray's own resource names: the latency meter reserves CPUs with `cpus`, and nothing else.
class Quantization(Strict):
    """How quantized artifacts are made (the bit-width and scheme are knobs of ``space``).

    ``int8_format``: the ONNX Runtime int8 format of 8-bit trials; ``auto`` measures each of
    ``INT8_FORMATS`` on the task's dense model once per machine (batch 1, one thread) and takes
    the fastest; qat fine-tunes on the weight grid of the format chosen.
    """

    int8_format: Int8FormatSetting = "auto"
    # Layers (module names, e.g. gru or encoder.layers.0.self_attn) whose weights may stay
    # float in a quantized artifact; the export check fails a claim that leaves others float.
    keep_float: list[Annotated[str, Field(min_length=1, strict=True)]] = Field(default_factory=list)

    @field_validator("keep_float")
    @classmethod
    def _keep_float(cls, v: list[str]) -> list[str]:
        blank = [name for name in v if not name.strip() or name != name.strip()]
        if blank:
            raise ValueError(
                f"keep_float lists module names without surrounding spaces (got {blank[0]!r}); "
                "e.g. keep_float: [gru, head]"
            )
        if len(set(v)) != len(v):
            raise ValueError(f"keep_float must not repeat a name (got {v})")
        return v


class Faults(Strict):
    """How a search treats failures.

    ``max_retries``: times Ray re-runs a trial lost to the infrastructure (a dead node or worker);
    a trial's own failure (NaN loss, export error) is never retried. ``stop_after_failures``:
    stop the search when its first N finished trials all failed (0 never stops).
    """

    max_retries: Annotated[int, Field(ge=0, le=100)] = 2
    stop_after_failures: Annotated[int, Field(ge=0)] = 4


class Tracking(Strict):
    """Where MLflow records the search. ``None`` means ./mlflow.db (SQLite, absolute path)."""

    uri: str | None = None

    @field_validator("uri")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        return _no_credentials(v)


def _no_credentials(uri: str | None) -> str | None:
    found = credentials_in(uri) if uri is not None else None
    if found is not None:
        raise ValueError(
            f"a URI must not hold credentials (they would end up in logs, the recorded config "
            f"and other processes' argv), and this one holds {found}; {CREDENTIALS_FIX}"
        )
    return uri


class SearchSpec(Strict):
    """Everything one search needs, validated."""

    experiment: Annotated[str, Field(min_length=1, max_length=200)]
    # Required, like experiment: which model is compressed must never be a silent default.
    task: Annotated[str, Field(min_length=1)]
    seed: int = 0
    trials: Annotated[int, Field(ge=1, le=100_000)] = 24
    concurrency: Annotated[int, Field(ge=1, le=10_000)] = 2
    objectives: list[Objective] = Field(default_factory=_default_objectives)
    space: Space = Space()
    sampler: SamplerSpec = SamplerSpec()
    resources: Resources = Resources()
    training: Training = Training()
    latency: Latency = Latency()
    quantization: Quantization = Quantization()
    pruning: Pruning = Pruning()
    tracking: Tracking = Tracking()
    faults: Faults = Faults()
    early_stopping: EarlyStopping = EarlyStopping()
    # Where Ray Tune keeps the search's state (for --resume). None: <workdir>/.slimtune/ray.
    # On a multi-node cluster give a path every node sees (NFS) or a URI such as s3://bucket/x.
    storage: str | None = None

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str | None) -> str | None:
        return _no_credentials(v)

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[Objective]) -> list[Objective]:
        if not v:
            raise ValueError(
                "at least one objective is needed, e.g. {metric: accuracy, direction: maximize}"
            )
        names = [o.metric for o in v]
        if len(set(names)) != len(names):
            raise ValueError(f"each metric may appear once (got {names})")
        return v

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: SamplerSpec, info: ValidationInfo) -> SamplerSpec:
        from searchspace._cover import check_cover  # _cover reads Space: imported late

        space, trials = info.data.get("space"), info.data.get("trials")
        if isinstance(space, Space) and isinstance(trials, int):
            check_cover(space, v.cover, trials)
        return v

    @field_validator("early_stopping")
    @classmethod
    def _early_stopping(cls, v: EarlyStopping, info: ValidationInfo) -> EarlyStopping:
        training = info.data.get("training")
        epochs = training.epochs if isinstance(training, Training) else None
        if v.enabled and epochs is not None and not v.rungs(epochs):
            raise ValueError(
                f"min_epochs must be below training.epochs for {v.name} to stop anything "
                f"(got min_epochs={v.min_epochs}, training.epochs={epochs})"
            )
        return v

    @model_validator(mode="after")
    def _cross(self) -> SearchSpec:
        if self.sampler.name == "gp" and len(self.objectives) > 3:
            raise ValueError("sampler 'gp' supports at most 3 objectives")
        return self

    @property
    def metric_names(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def directions(self) -> list[Literal["maximize", "minimize"]]:
        return [o.direction for o in self.objectives]
