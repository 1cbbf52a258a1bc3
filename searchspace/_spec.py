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

# Bit-widths a trial can produce. 32: fp32 ONNX; 8: real int8 QDQ in ONNX Runtime;
# 2-7: fake-quant fine-tuning, exported with baked weights and tagged artifact=simulated.
SUPPORTED_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 32)

SAMPLERS = ("tpe", "nsga2", "gp", "random")

KNOBS = ("lr", "batch_size", "sparsity", "bits")


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
    """A categorical knob: one of a list of values."""

    choices: list[int | float]

    @field_validator("choices")
    @classmethod
    def _non_empty_unique(cls, v: list[int | float]) -> list[int | float]:
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


class Space(_Strict):
    """The four knobs every trial sets. A plain number fixes a knob."""

    lr: Knob = FloatRange(low=1e-4, high=1e-2, log=True)
    batch_size: Knob = Choice(choices=[32, 64, 128])
    sparsity: Knob = FloatRange(low=0.0, high=0.9)
    bits: Knob = Choice(choices=[8, 32])

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

    def knobs(self) -> dict[str, Knob]:
        return {name: getattr(self, name) for name in KNOBS}


def _check_knob(knob: Any, ok: Any, rule: str, *, allow_range: bool = True) -> Any:
    if isinstance(knob, FloatRange):
        if not allow_range:
            raise ValueError(
                f"a range is not allowed here: {rule}; list values as {{choices: [...]}}"
            )
        values = [knob.low, knob.high]
    elif isinstance(knob, Choice):
        values = list(knob.choices)
    else:
        values = [knob]
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


class Tracking(_Strict):
    """Where MLflow records the search. ``None`` means ./mlflow.db (SQLite, absolute path)."""

    uri: str | None = None


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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialParams:
        return cls(
            lr=float(d["lr"]),
            batch_size=int(d["batch_size"]),
            sparsity=float(d["sparsity"]),
            bits=int(d["bits"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
