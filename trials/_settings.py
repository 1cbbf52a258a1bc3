"""Values objects of a trial: how it runs (settings) and what it returns (result, baseline)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from searchspace import INT8_FORMATS, ConfigError, SearchSpec
from trials._device import check_device_name


@dataclass(frozen=True)
class Int8Resolution:
    """How a search resolved ``int8_format: auto`` before its trials started: ``format`` is the
    int8 format every 8-bit trial uses, timed by the search's latency meter on its node
    (``node``) against the other candidates (``latencies_ms``, median batch-1 ms on the dense
    model; ``deviations``, how far each one's int8 kernels depart there from its own math, see
    ``trials._int8_fidelity``); ``source`` is ``measured`` (timed for this search) or ``cached``
    (timed earlier on a machine with the same CPU)."""

    format: str
    source: Literal["measured", "cached"]
    latencies_ms: dict[str, float] = field(default_factory=dict)
    node: str = ""
    deviations: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format not in INT8_FORMATS:
            self._fail("format", self.format, f"it must be one of {list(INT8_FORMATS)}")
        if self.source not in ("measured", "cached"):
            self._fail("source", self.source, "it must be 'measured' or 'cached'")
        latencies = self.latencies_ms
        if not isinstance(latencies, dict) or set(latencies) != set(INT8_FORMATS):
            self._fail("latencies_ms", latencies, f"it must time each of {list(INT8_FORMATS)}")
        for name, ms in latencies.items():
            if isinstance(ms, bool) or not isinstance(ms, int | float) or not ms > 0:
                self._fail(f"latencies_ms.{name}", ms, "it must be a positive number of ms")
        if not isinstance(self.node, str):
            self._fail("node", self.node, "it must be a string (the meter's node id)")
        deviations = self.deviations
        if not isinstance(deviations, dict) or set(deviations) != set(INT8_FORMATS):
            self._fail("deviations", deviations, f"it must check each of {list(INT8_FORMATS)}")
        for name, d in deviations.items():
            if isinstance(d, bool) or not isinstance(d, int | float) or not d >= 0:
                self._fail(f"deviations.{name}", d, "it must be a number >= 0 (inf: unusable)")

    @staticmethod
    def _fail(name: str, value: object, rule: str) -> None:
        raise ConfigError(
            field=f"int8_auto.{name}",
            value=value,
            rule=rule,
            fix="pass the Int8Resolution the search's driver made (orchestrator._int8)",
            source="TrialSettings",
        )


@dataclass(frozen=True)
class TrialSettings:
    """Fixed settings shared by every trial of a search (the knobs are in ``TrialParams``).

    Paths must be absolute: Ray runs each trial in its own working directory. ``epochs=0`` is
    allowed and means post-training compression (prune and quantize without fine-tuning).

    ``seed`` seeds the trial's own randomness (shuffling, calibration samples, dropout);
    ``baseline_seed`` picks the dense baseline it compresses (``None``: ``seed``). A search
    passes its own seed there, so that every trial starts from the one baseline the search
    measured, while each trial's ``seed`` differs.
    """

    epochs: int
    seed: int
    cache_dir: Path
    work_dir: Path
    latency_warmup: int = 20
    latency_repeats: int = 200
    latency_threads: int = 1
    calibration_samples: int = 256
    baseline_seed: int | None = None
    # Latency: more timed runs, in blocks, until the block medians' CV is at most
    # latency_target_cv, up to latency_max_repeats (None: 5 x latency_repeats). See LatencyPlan.
    latency_target_cv: float = 0.05
    latency_max_repeats: int | None = None
    # A measurement that did not converge (block medians' CV above latency_target_cv) is taken
    # again, up to this many times, through the same meter; the steadiest one is kept.
    latency_remeasure: int = 2
    # Where fine-tuning (and a baseline not yet cached) trains: "cpu", "cuda" or "cuda:N".
    # Export and measurement run on the CPU whatever it is. See trials._device.
    device: str = "cpu"
    # The ONNX Runtime int8 format of 8-bit trials: one of searchspace.INT8_FORMATS, or "auto"
    # (measured on the dense model once per machine, cached in cache_dir; trials._quantize_auto).
    int8_format: str = "auto"
    # A search's resolution of "auto", made by its driver and latency meter before the trials
    # start; None (a trial run as a library call): an 8-bit trial with "auto" times the formats
    # in its own process. Not part of a trial record: it records the format used (int8_format).
    int8_auto: Int8Resolution | None = None
    # Structured pruning keeps widths multiples of this (config pruning.round_to; 1: exact).
    pruning_round_to: int = 8
    # Module names whose weights may stay float in a quantized artifact (quantization.keep_float).
    keep_float: tuple[str, ...] = ()
    # A latency table (``trials._plan_latency.LatencyTable.to_dict``) a mixed plan with a latency
    # budget allocates from instead of measuring one: a rebuild passes the record's, so that it
    # makes the plan the trial made. Not part of a trial record's settings: the plan holds it.
    plan_latency: dict[str, Any] | None = None

    @classmethod
    def for_search(
        cls,
        spec: SearchSpec,
        *,
        seed: int,
        cache_dir: Path,
        work_dir: Path,
        baseline_seed: int | None = None,
        device: str = "cpu",
        int8_auto: Int8Resolution | None = None,
    ) -> TrialSettings:
        """The settings a search's config fixes for its trials and its baseline (fine-tuning
        epochs, latency measurement, int8 format), with this trial's seed and paths, and the
        search's resolution of ``int8_format: auto`` (``int8_auto``) when it made one."""
        return cls(
            epochs=spec.training.epochs,
            seed=seed,
            cache_dir=cache_dir,
            work_dir=work_dir,
            latency_warmup=spec.latency.warmup,
            latency_repeats=spec.latency.repeats,
            latency_threads=spec.latency.threads,
            baseline_seed=baseline_seed,
            latency_target_cv=spec.latency.target_cv,
            latency_max_repeats=spec.latency.max_repeats,
            latency_remeasure=spec.latency.remeasure,
            device=device,
            int8_format=spec.quantization.int8_format,
            int8_auto=int8_auto,
            pruning_round_to=spec.pruning.round_to,
            keep_float=tuple(spec.quantization.keep_float),
        )

    def __post_init__(self) -> None:
        for name in ("cache_dir", "work_dir"):
            value = getattr(self, name)
            if not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
                value = getattr(self, name)
            if not value.is_absolute():
                raise ConfigError(
                    field=name,
                    value=str(value),
                    rule="the path must be absolute (trials run in their own working directory)",
                    fix=f"pass Path({str(value)!r}).resolve()",
                    source="TrialSettings",
                )
        minimums = {
            "epochs": 0,
            "latency_warmup": 0,
            "latency_repeats": 5,
            "latency_threads": 1,
            "calibration_samples": 1,
            "latency_remeasure": 0,
            "pruning_round_to": 1,
        }
        for name, low in minimums.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(
                    field=name,
                    value=value,
                    rule=f"it must be an integer >= {low}",
                    fix=f"set {name} to an integer >= {low}",
                    source="TrialSettings",
                )
        if self.int8_format != "auto" and self.int8_format not in INT8_FORMATS:
            raise ConfigError(
                field="int8_format",
                value=self.int8_format,
                rule=f"it must be auto or one of {list(INT8_FORMATS)}",
                fix="pass int8_format='auto' (measured once per machine) or a format name",
                source="TrialSettings",
            )
        if self.int8_auto is not None and (
            self.int8_format != "auto" or not isinstance(self.int8_auto, Int8Resolution)
        ):
            raise ConfigError(
                field="int8_auto",
                value=self.int8_auto,
                rule="it must be None or an Int8Resolution, and only with int8_format='auto'",
                fix="pass int8_auto=None, or int8_format='auto' with the search's resolution",
                source="TrialSettings",
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(
                field="seed",
                value=self.seed,
                rule="it must be an integer",
                fix="pass an int seed",
                source="TrialSettings",
            )
        base = self.baseline_seed
        if base is not None and (isinstance(base, bool) or not isinstance(base, int)):
            raise ConfigError(
                field="baseline_seed",
                value=base,
                rule="it must be an integer or None",
                fix="pass the search's int seed, or None to use `seed`",
                source="TrialSettings",
            )
        cap = self.latency_max_repeats
        if cap is not None and (
            isinstance(cap, bool) or not isinstance(cap, int) or cap < self.latency_repeats
        ):
            raise ConfigError(
                field="latency_max_repeats",
                value=cap,
                rule=f"it must be None or an integer >= latency_repeats ({self.latency_repeats})",
                fix=f"set latency_max_repeats to at least {self.latency_repeats}, or None",
                source="TrialSettings",
            )
        cv = self.latency_target_cv
        if isinstance(cv, bool) or not isinstance(cv, int | float) or not 0 < cv <= 1:
            raise ConfigError(
                field="latency_target_cv",
                value=cv,
                rule="it must be a number in (0, 1]",
                fix="set latency_target_cv to e.g. 0.05",
                source="TrialSettings",
            )
        if isinstance(self.keep_float, list):  # as a JSON record holds it
            object.__setattr__(self, "keep_float", tuple(self.keep_float))
        if not isinstance(self.keep_float, tuple) or not all(
            isinstance(n, str) and n.strip() for n in self.keep_float
        ):
            raise ConfigError(
                field="keep_float",
                value=self.keep_float,
                rule="it must be a tuple of non-empty module names",
                fix="pass e.g. keep_float=('gru',)",
                source="TrialSettings",
            )
        check_device_name(self.device, source="TrialSettings")

    @property
    def dense_seed(self) -> int:
        """The seed of the dense baseline this trial compresses."""
        return self.seed if self.baseline_seed is None else self.baseline_seed


@dataclass(frozen=True)
class Baseline:
    """The dense model every trial starts from, trained once and cached on disk.

    ``state_path`` holds a plain ``state_dict`` (``torch.load(path, weights_only=True)``);
    ``accuracy`` is the PyTorch model's metric on the validation data; ``train_seconds`` is the
    time it took to train (when it was trained, also for a cached baseline); ``device`` is
    where it was trained (``"cpu"`` or ``"cuda"``).
    """

    state_path: Path
    accuracy: float
    train_seconds: float
    cached: bool
    device: str = "cpu"


@dataclass(frozen=True)
class PruningLog:
    """What pruning did in one trial, as data (the tags ``pruning_*`` say it as text).

    ``scheme`` and ``target`` are the knobs; for gradual unstructured pruning ``total_steps``,
    ``ramp_steps`` and ``every`` give the cubic schedule and ``history`` each mask update as
    ``(step, sparsity)``; for structured pruning ``widths`` are the Conv/Linear output widths left.
    """

    scheme: str
    target: float
    total_steps: int = 0
    ramp_steps: int = 0
    every: int = 0
    history: tuple[tuple[int, float], ...] = ()
    widths: tuple[int, ...] = ()


@dataclass(frozen=True)
class Lineage:
    """Where a trial's model came from, as fingerprints a rebuild can check: the dense baseline
    it started from (its seed and the SHA-256 of its weights), the SHA-256 of the compressed
    model's weights just before export, and what pruning did. See ``trials.weights_sha256``.
    ``int8_format``: the int8 format an 8-bit trial used (``auto`` resolved; None otherwise).
    ``plan``: a mixed trial's per-layer plan (``CompressionPlan.to_dict``; None when uniform)."""

    baseline_seed: int
    baseline_sha256: str
    weights_sha256: str
    pruning: PruningLog
    int8_format: str | None = None
    plan: dict[str, Any] | None = None


@dataclass(frozen=True)
class TrialResult:
    """What a trial measured on its exported artifact (metrics), how to read it (tags), and the
    artifact itself (``onnx_path``, one self-contained file). ``lineage`` (set by ``run_trial``)
    fingerprints how the model was made, for rebuilding it."""

    metrics: dict[str, float]
    tags: dict[str, str]
    onnx_path: Path
    lineage: Lineage | None = None
