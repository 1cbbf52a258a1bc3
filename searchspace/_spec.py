"""Typed, self-validating description of a search: knobs, objectives, sampler, budget, tracking."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from searchspace._early_stopping import EarlyStopping
from searchspace._latency import Latency
from searchspace._pruning import Pruning
from searchspace._secrets import CREDENTIALS_FIX, credentials_in
from searchspace._space import (
    KNOBS,
    Space,
)
from searchspace._strict import Strict

# What one trial measures on its exported artifact, with each metric's natural direction.
METRICS: dict[str, Literal["maximize", "minimize"]] = {
    "accuracy": "maximize",
    "size_bytes": "minimize",
    "size_gzip_bytes": "minimize",
    "latency_ms": "minimize",
    "latency_p90_ms": "minimize",
}


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
    "space.budget": "write budget as a fraction of the dense artifact's size (or latency, with "
    "budget_metric: latency) in (0, 1], e.g. budget: 0.4 or {low: 0.25, high: 0.6}",
    "space.budget_metric": "write budget_metric as size, latency or {choices: [size, latency]}",
    "space.pruning_scope": "write pruning_scope as global, layer or {choices: [global, layer]}",
    "quantization.keep_float": "list module names of the model, e.g. keep_float: [gru, head]",
}

SAMPLERS = ("tpe", "nsga2", "gp", "random")

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
