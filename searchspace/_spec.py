"""Typed, self-validating description of a search: knobs, objectives, sampler, budget, tracking."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

# What one trial measures on its exported artifact, with each metric's natural direction.
METRICS: dict[str, Literal["maximize", "minimize"]] = {
    "accuracy": "maximize",
    "size_bytes": "minimize",
    "size_gzip_bytes": "minimize",
    "latency_ms": "minimize",
    "latency_p90_ms": "minimize",
}

# Bit-widths a trial can produce. 32: fp32 ONNX; 16: fp16 ONNX (ORT's CPU provider computes it
# in fp32); 8: real int8 QDQ in ONNX Runtime; 2-7: fake-quant fine-tuning, exported with baked
# weights and tagged artifact=simulated.
SUPPORTED_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 16, 32)

# Pruning schemes. unstructured: global magnitude with Zhu & Gupta's gradual cubic schedule;
# structured: channels/neurons physically removed (torch-pruning), sparsity = channel ratio.
PRUNING_SCHEMES: tuple[str, ...] = ("unstructured", "structured")

SAMPLERS = ("tpe", "nsga2", "gp", "random")

KNOBS = ("lr", "batch_size", "sparsity", "bits", "pruning", "distill_weight", "distill_temperature")

# Knobs whose values are names (strings), not numbers.
NAME_KNOBS = ("pruning",)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class Objective(_Strict):
    """One metric to optimize and its direction."""

    metric: str
    direction: Literal["maximize", "minimize"]

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


class Latency(_Strict):
    """How an artifact's batch-1 latency is measured in ONNX Runtime."""

    warmup: Annotated[int, Field(ge=0)] = 20
    repeats: Annotated[int, Field(ge=5)] = 200
    threads: Annotated[int, Field(ge=1)] = 1


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
        if v is not None and "://" in v and "@" in v.split("://", 1)[1].split("/", 1)[0]:
            raise ValueError(
                "the tracking URI must not hold a user name or password (they would end up in "
                "logs and the recorded config); set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment instead"
            )
        return v


class SearchSpec(_Strict):
    """Everything one search needs, validated."""

    experiment: Annotated[str, Field(min_length=1, max_length=200)]
    task: Annotated[str, Field(min_length=1)] = "digits"
    seed: int = 0
    trials: Annotated[int, Field(ge=1, le=100_000)] = 24
    concurrency: Annotated[int, Field(ge=1, le=10_000)] = 2
    objectives: list[Objective] = Field(default_factory=_default_objectives)
    space: Space = Space()
    sampler: SamplerSpec = SamplerSpec()
    resources: Resources = Resources()
    training: Training = Training()
    latency: Latency = Latency()
    tracking: Tracking = Tracking()
    faults: Faults = Faults()
    # Where Ray Tune keeps the search's state (for --resume). None: <workdir>/.slimtune/ray.
    # On a multi-node cluster give a path every node sees (NFS) or a URI such as s3://bucket/x.
    storage: str | None = None

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
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
