"""Typed, self-validating description of a search: knobs, objectives, sampler, budget, tracking."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from searchspace._early_stopping import EarlyStopping
from searchspace._pruning import PRUNING_SCOPES, Pruning
from searchspace._secrets import CREDENTIALS_FIX, credentials_in

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


class _Strict(BaseModel):
    # strict: a count is a whole number (not true, not "3", not 3.0), a float a number (an int
    # is fine) and a name a string; allow_inf_nan=False: every float knob and setting is finite.
    # Together they hold for every field of every model (tests/searchspace/test_strict_types.py).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class FloatRange(_Strict):
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


class Choice(_Strict):
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


class Space(_Strict):
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


class Objective(_Strict):
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


class SamplerSpec(_Strict):
    """Which Optuna sampler proposes trials."""

    name: Literal["tpe", "nsga2", "gp", "random"] = "tpe"
    seed: int | None = 0
    # TPE/GP: trials proposed at random before the model kicks in.
    startup_trials: Annotated[int, Field(ge=1)] = 8
    # NSGA-II only.
    population_size: Annotated[int, Field(ge=2)] = 8


class Resources(_Strict):
    """What one trial reserves on a Ray node."""

    cpu: Annotated[float, Field(gt=0)] = 1.0
    gpu: Annotated[float, Field(ge=0)] = 0.0


class Training(_Strict):
    """Fixed settings of every trial's fine-tuning."""

    epochs: Annotated[int, Field(ge=1, le=1000)] = 3


# Ray's own resource names: the latency meter reserves CPUs with `cpus`, and nothing else.
_RAY_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


class Latency(_Strict):
    """How an artifact's batch-1 latency is measured in ONNX Runtime, and where.

    Timing: ``warmup`` untimed runs, then at least ``repeats`` timed runs in blocks; more blocks
    while the block medians' coefficient of variation is above ``target_cv``, up to
    ``max_repeats`` (``None``: 5 x ``repeats``); ``threads`` intra-op threads.

    Place: ``where: actor`` (default) measures every artifact of a search, the baseline's
    included, in one Ray actor that takes one measurement at a time; it reserves ``cpus`` CPUs
    (0: none) and the custom Ray ``resources`` given, which pin it to the nodes that have them
    (e.g. ``{deploy_cpu: 1}``). ``where: inline`` measures in each trial's own process.
    ``isolation``: how the trials on the meter's machine are kept from disturbing it.
    ``pause``: while a measurement runs they wait at their next training step (a lock on the
    node). ``cores``: the meter pins itself to ``meter_cores`` cores of its node
    (``max(cpus, threads)``) and the trials there to the other cores; nobody pauses. ``none``:
    no isolation. ``auto`` (default): ``cores`` on a node with at least ``meter_cores`` + one
    trial's CPUs + 1 spare core (and ``where: actor`` and a whole ``cpus``), else ``pause``
    (orchestrator._isolation). ``pause_trials`` is the older spelling: true is ``pause``,
    false ``none``.
    """

    warmup: Annotated[int, Field(ge=0)] = 20
    repeats: Annotated[int, Field(ge=5)] = 200
    max_repeats: Annotated[int, Field(ge=5)] | None = None
    target_cv: Annotated[float, Field(gt=0, le=1)] = 0.05
    threads: Annotated[int, Field(ge=1)] = 1
    where: Literal["actor", "inline"] = "actor"
    cpus: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    resources: dict[str, Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        default_factory=dict
    )
    isolation: Literal["auto", "pause", "cores", "none"] = "auto"
    pause_trials: bool | None = None
    # A measurement whose block medians' CV stays above target_cv is taken again, up to this
    # many times, before its trial can enter the front (0: never).
    remeasure: Annotated[int, Field(ge=0, le=20)] = 2

    @model_validator(mode="before")
    @classmethod
    def _pause_trials(cls, data: Any) -> Any:
        """``pause_trials`` (the older setting) says ``isolation`` unless that is given too."""
        if not isinstance(data, dict) or not isinstance(data.get("pause_trials"), bool):
            return data
        implied = "pause" if data["pause_trials"] else "none"
        given = data.get("isolation")
        if given is None:
            return {**data, "isolation": implied}
        if given != implied:
            raise ValueError(
                f"pause_trials: {str(data['pause_trials']).lower()} means isolation: {implied}, "
                f"but isolation is {given!r}; remove pause_trials (isolation replaces it)"
            )
        return data

    @model_validator(mode="after")
    def _isolation(self) -> Latency:
        if self.isolation != "cores":
            return self
        if self.where == "inline":
            raise ValueError(
                "isolation 'cores' pins the latency actor to its own cores, but where is "
                "'inline' (each trial measures in its own process); set where: actor, or "
                "isolation: pause"
            )
        if self.cpus != int(self.cpus):
            raise ValueError(
                f"isolation 'cores' pins the latency actor to whole cores, but cpus is "
                f"{self.cpus:g}; set cpus to a whole number (e.g. 1)"
            )
        if 0 < self.cpus < self.threads:
            raise ValueError(
                f"isolation 'cores' gives the latency actor cpus={self.cpus:g} cores, fewer "
                f"than its threads={self.threads}; raise cpus to {self.threads}, or lower threads"
            )
        return self

    @property
    def meter_cores(self) -> int:
        """How many cores the meter pins itself to under ``isolation: cores``: ``cpus`` (which
        Ray also reserves for it), at least ``threads``."""
        return max(int(self.cpus), self.threads)

    @field_validator("max_repeats")
    @classmethod
    def _max_repeats(cls, v: int | None, info: ValidationInfo) -> int | None:
        repeats = info.data.get("repeats")  # absent when repeats itself is invalid
        if v is not None and repeats is not None and v < repeats:
            raise ValueError(
                f"max_repeats must be >= repeats ({repeats}) (got {v}); raise it, or leave it "
                "out for 5 x repeats"
            )
        return v

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, v: float, info: ValidationInfo) -> float:
        if v > 0 and info.data.get("where") == "inline":
            raise ValueError(
                f"cpus reserves CPUs for the latency actor, but where is 'inline' (got "
                f"cpus={v:g}); set cpus: 0, or where: actor"
            )
        return v

    @field_validator("resources")
    @classmethod
    def _resources(cls, v: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        for name in v:
            if not name.strip():
                raise ValueError("a resource name must not be empty; e.g. {deploy_cpu: 1}")
            if name in _RAY_BUILTIN_RESOURCES:
                raise ValueError(
                    f"resources takes custom Ray resources (the ones a node is started with, "
                    f"`ray start --resources '{{\"deploy_cpu\": 1}}'`), not {name!r}; "
                    "reserve CPUs with latency.cpus"
                )
        if v and info.data.get("where") == "inline":
            raise ValueError(
                f"resources pin the latency actor to a node, but where is 'inline' (got {v}); "
                "set where: actor, or remove resources"
            )
        return v


class Quantization(_Strict):
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


class Faults(_Strict):
    """How a search treats failures.

    ``max_retries``: times Ray re-runs a trial lost to the infrastructure (a dead node or worker);
    a trial's own failure (NaN loss, export error) is never retried. ``stop_after_failures``:
    stop the search when its first N finished trials all failed (0 never stops).
    """

    max_retries: Annotated[int, Field(ge=0, le=100)] = 2
    stop_after_failures: Annotated[int, Field(ge=0)] = 4


class Tracking(_Strict):
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


class SearchSpec(_Strict):
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


@dataclass(frozen=True)
class TrialParams:
    """One point of the space: the knob values a trial runs with."""

    lr: float
    batch_size: int
    sparsity: float
    bits: int
    pruning: str = "unstructured"
    distill_weight: float = 0.0
    distill_temperature: float = 2.0
    quant_scheme: str = "qat"
    pruning_scope: str = "global"
    plan: str = "uniform"
    budget: float = 0.5

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"`lr > 0` must hold, but got lr={self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"`batch_size >= 1` must hold, but got batch_size={self.batch_size}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"`0 <= sparsity < 1` must hold, but got sparsity={self.sparsity}")
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(
                f"bits must be one of {list(SUPPORTED_BITS)}, but got bits={self.bits}"
            )
        if self.pruning not in PRUNING_SCHEMES:
            raise ValueError(
                f"pruning must be one of {list(PRUNING_SCHEMES)}, but got pruning={self.pruning!r}"
            )
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(
                f"`0 <= distill_weight <= 1` must hold, but got "
                f"distill_weight={self.distill_weight}"
            )
        if not (self.distill_temperature > 0 and math.isfinite(self.distill_temperature)):
            raise ValueError(
                f"`distill_temperature > 0` must hold, but got "
                f"distill_temperature={self.distill_temperature}"
            )
        if self.quant_scheme not in QUANT_SCHEMES:
            raise ValueError(
                f"quant_scheme must be one of {list(QUANT_SCHEMES)}, but got "
                f"quant_scheme={self.quant_scheme!r}"
            )
        if self.pruning_scope not in PRUNING_SCOPES:
            raise ValueError(
                f"pruning_scope must be one of {list(PRUNING_SCOPES)}, but got "
                f"pruning_scope={self.pruning_scope!r}"
            )
        if self.plan not in PLAN_KINDS:
            raise ValueError(f"plan must be one of {list(PLAN_KINDS)}, but got plan={self.plan!r}")
        if not 0.0 < self.budget <= 1.0:
            raise ValueError(f"`0 < budget <= 1` must hold, but got budget={self.budget}")
        if self.quant_scheme == "ptq" and self.bits in SIMULATED_BITS:
            raise ValueError(
                f"quant_scheme 'ptq' cannot produce bits={self.bits} (simulated widths "
                f"{list(SIMULATED_BITS)} exist only as fake-quant fine-tuning): use qat"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialParams:
        return cls(
            lr=float(d["lr"]),
            batch_size=int(d["batch_size"]),
            sparsity=float(d["sparsity"]),
            bits=int(d["bits"]),
            pruning=str(d.get("pruning", "unstructured")),
            distill_weight=float(d.get("distill_weight", 0.0)),
            distill_temperature=float(d.get("distill_temperature", 2.0)),
            quant_scheme=str(d.get("quant_scheme", "qat")),
            pruning_scope=str(d.get("pruning_scope", "global")),
            plan=str(d.get("plan", "uniform")),
            budget=float(d.get("budget", 0.5)),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
