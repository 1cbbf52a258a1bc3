"""Measurement of an exported artifact in ONNX Runtime: accuracy, size on disk, latency."""

from __future__ import annotations

import gzip
import math
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx
import onnxruntime as ort

from searchspace import ConfigError
from trials._errors import TaskError
from trials._export import onnx_op_types, onnx_opset
from trials._settings import TrialSettings
from trials._task import Task, checked_data

_EVAL_BATCH = 256
# The compressed size is gzip at level 9. On the digits CNN at 50 % sparsity level 9 takes
# ~1.2 s per file (level 6: 0.15 s, 2 % larger): deflate's longest match search is slow on runs
# of zeros. Kept at 9 so the figure is the best plain gzip can do.
_GZIP_LEVEL = 9


@dataclass(frozen=True)
class LatencyPlan:
    """How an artifact is timed: ``warmup`` untimed batch-1 runs, then timed runs in blocks of
    ``repeats // 5`` (at least 1) until at least ``repeats`` runs are in and the medians of the
    blocks agree (their coefficient of variation is at most ``target_cv``), or ``max_repeats``
    runs are in (``None``: 5 x ``repeats``). ``threads`` intra-op threads in ONNX Runtime.

    The block medians are independent repeats of the measurement: their CV says how much the
    reported median would move if it were measured again, which more runs do bring down (the
    CV of single runs is a property of the machine and does not shrink with repeats).
    """

    warmup: int = 20
    repeats: int = 200
    threads: int = 1
    target_cv: float = 0.05
    max_repeats: int | None = None

    def __post_init__(self) -> None:
        for name, low in {"warmup": 0, "repeats": 5, "threads": 1}.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(
                    field=f"latency.{name}",
                    value=value,
                    rule=f"it must be an integer >= {low}",
                    fix=f"set latency.{name} to an integer >= {low}",
                    source="LatencyPlan",
                )
        if self.max_repeats is None:
            object.__setattr__(self, "max_repeats", 5 * self.repeats)
        if (
            isinstance(self.max_repeats, bool)
            or not isinstance(self.max_repeats, int)
            or self.max_repeats < self.repeats
        ):
            raise ConfigError(
                field="latency.max_repeats",
                value=self.max_repeats,
                rule=f"it must be an integer >= latency.repeats ({self.repeats})",
                fix=f"set latency.max_repeats to at least {self.repeats}, or leave it out "
                "(5 x repeats)",
                source="LatencyPlan",
            )
        if not (isinstance(self.target_cv, int | float) and 0 < self.target_cv <= 1):
            raise ConfigError(
                field="latency.target_cv",
                value=self.target_cv,
                rule="it must be a number in (0, 1]",
                fix="set latency.target_cv to e.g. 0.05 (block medians within 5 %)",
                source="LatencyPlan",
            )

    @property
    def block(self) -> int:
        """Timed runs per block: at least five blocks by the time ``repeats`` runs are in."""
        return max(1, self.repeats // 5)

    @property
    def run_cap(self) -> int:
        """The most timed runs: ``max_repeats`` (never ``None`` once validated)."""
        return self.max_repeats if self.max_repeats is not None else 5 * self.repeats


@dataclass(frozen=True)
class LatencyStats:
    """Batch-1 latency of one artifact, in milliseconds, and how far it can be trusted.

    ``cv`` is the spread of single runs (std / mean); ``median_cv`` the CV of the block medians
    (the stopping rule of ``LatencyPlan``); ``converged`` whether it met ``target_cv`` within
    ``max_repeats`` runs.
    """

    median_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    cv: float
    median_cv: float
    runs: int
    converged: bool
    blocks: int = 0

    @classmethod
    def from_times(cls, times_ms: np.ndarray, block: int, target_cv: float) -> LatencyStats:
        mean = float(np.mean(times_ms))
        std = float(np.std(times_ms, ddof=1)) if len(times_ms) > 1 else 0.0
        median_cv = _block_median_cv(times_ms, block)
        return cls(
            median_ms=float(np.median(times_ms)),
            p90_ms=float(np.percentile(times_ms, 90)),
            mean_ms=mean,
            std_ms=std,
            min_ms=float(np.min(times_ms)),
            cv=std / mean if mean > 0 else 0.0,
            median_cv=median_cv,
            runs=len(times_ms),
            converged=median_cv <= target_cv,
            blocks=len(times_ms) // block,
        )

    def metrics(self) -> dict[str, float]:
        """The figures as logged: ``latency_ms`` (median), ``latency_p90_ms``, ...."""
        return {
            "latency_ms": self.median_ms,
            "latency_p90_ms": self.p90_ms,
            "latency_mean_ms": self.mean_ms,
            "latency_std_ms": self.std_ms,
            "latency_min_ms": self.min_ms,
            "latency_cv": self.cv,
            "latency_median_cv": self.median_cv,
            "latency_runs": float(self.runs),
            "latency_blocks": float(self.blocks),
        }


@dataclass(frozen=True)
class LatencyReading:
    """A latency measurement and where it was taken: ``tags`` name the place
    (``latency_where``, ``latency_node``, ...); ``extra`` holds further figures about the
    measurement (e.g. how long it waited for the machine to be quiet)."""

    stats: LatencyStats
    tags: dict[str, str]
    extra: dict[str, float] = field(default_factory=dict)


class LatencyMeter(Protocol):
    """Where and how a trial's artifact is timed. ``run_trial`` calls ``measure`` once for its
    artifact, and ``pause_point`` between units of its own heavy work (each training step):
    a meter that shares the machine with running trials may hold the trial there while it
    measures, so that the measurement is not disturbed."""

    def measure(self, onnx_path: Path, example: np.ndarray, plan: LatencyPlan) -> LatencyReading:
        """Time the artifact on ``example`` (batch 1) as ``plan`` says."""
        ...

    def pause_point(self) -> None:
        """A moment at which this process's work may wait for a measurement to finish."""
        ...


class InlineMeter:
    """Times the artifact in this process, at once, with no coordination: what a trial run
    as a library does. Concurrent work on the machine can disturb it."""

    def measure(self, onnx_path: Path, example: np.ndarray, plan: LatencyPlan) -> LatencyReading:
        stats = LatencySession(onnx_path, threads=plan.threads).time(example, plan)
        return LatencyReading(stats, {"latency_where": "inline", **node_tags()})

    def pause_point(self) -> None:
        return None


class LatencySession:
    """An ONNX Runtime session made for timing (``threads`` intra-op threads, one inter-op
    thread, sequential execution) from a file or the model's bytes. Built apart from
    ``time`` so that a caller can build it before it claims the machine."""

    def __init__(self, model: Path | bytes, *, threads: int) -> None:
        self._session = cpu_session(model, threads=threads)

    def time(self, example: np.ndarray, plan: LatencyPlan) -> LatencyStats:
        """Warm up, then time batch-1 runs on ``example`` as ``plan`` says."""
        example = _batch_one(example)
        name = self._session.get_inputs()[0].name
        feed = {name: np.ascontiguousarray(example)}
        for _ in range(plan.warmup):
            self._session.run(None, feed)
        times: list[float] = []
        while True:
            for _ in range(plan.block):
                start = time.perf_counter_ns()
                self._session.run(None, feed)
                times.append((time.perf_counter_ns() - start) / 1e6)
            if len(times) >= plan.run_cap:
                break
            if (
                len(times) >= plan.repeats
                and _block_median_cv(np.asarray(times), plan.block) <= plan.target_cv
            ):
                break
        return LatencyStats.from_times(np.asarray(times), plan.block, plan.target_cv)


def latency_plan(settings: TrialSettings) -> LatencyPlan:
    """The ``LatencyPlan`` of a trial's settings (``latency_*`` fields)."""
    return LatencyPlan(
        warmup=settings.latency_warmup,
        repeats=settings.latency_repeats,
        threads=settings.latency_threads,
        target_cv=settings.latency_target_cv,
        max_repeats=settings.latency_max_repeats,
    )


def node_tags() -> dict[str, str]:
    """``latency_node`` for a measurement taken in this process: the host's name."""
    return {"latency_node": socket.gethostname()}


def measure_onnx(
    onnx_path: Path,
    task: Task,
    settings: TrialSettings,
    *,
    meter: LatencyMeter | None = None,
) -> tuple[dict[str, float], dict[str, str]]:
    """Measure an ONNX artifact as deployed.

    - ``accuracy``: ``task.metric`` of ONNX Runtime's outputs on the validation data;
    - ``size_bytes``: bytes of the artifact (the file, plus any external-data files it names);
      ``size_gzip_bytes``: the same bytes gzipped at level 9 (where unstructured sparsity shows);
    - ``latency_ms`` (median), ``latency_p90_ms``, ``latency_mean_ms``, ``latency_std_ms``,
      ``latency_min_ms``, ``latency_cv`` (spread of single runs), ``latency_median_cv``
      (agreement of the block medians), ``latency_runs`` and ``latency_blocks``: batch-1 runs
      on ``task.example_input()`` as ``latency_plan(settings)`` says, timed by ``meter``
      (default: ``InlineMeter``, in this process). A measurement that did not converge is
      taken again, up to ``settings.latency_remeasure`` times, and the steadiest one (lowest
      block-median CV) kept; ``latency_remeasured`` counts the extra measurements;
    - ``val_samples``: the validation samples the accuracy counts.

    Returns ``(metrics, tags)``; tags give ``onnx_ops``, ``onnx_opset``, where the latency was
    measured (``latency_where``, ``latency_node``, ...) and ``latency_converged``.
    """
    meter = meter or InlineMeter()
    session = cpu_session(onnx_path, threads=settings.latency_threads)
    accuracy, n_val = _accuracy_and_count(session, task)
    # val_samples: how many validation samples the accuracy counts (one is its resolution).
    metrics: dict[str, float] = {"accuracy": accuracy, "val_samples": float(n_val)}
    del session
    meter.pause_point()

    data = b"".join(p.read_bytes() for p in _artifact_files(onnx_path))
    metrics["size_bytes"] = float(len(data))
    metrics["size_gzip_bytes"] = float(len(gzip.compress(data, compresslevel=_GZIP_LEVEL, mtime=0)))
    meter.pause_point()

    example = task.example_input().float().numpy()
    if example.shape[0] != 1:
        raise TaskError(
            f"task {task.name!r}: example_input() must have batch size 1, got shape "
            f"{example.shape}. Fix: return x[:1]."
        )
    plan = latency_plan(settings)
    reading = meter.measure(onnx_path, example, plan)
    remeasured = 0
    while not reading.stats.converged and remeasured < settings.latency_remeasure:
        meter.pause_point()
        again = meter.measure(onnx_path, example, plan)
        remeasured += 1
        if again.stats.converged or again.stats.median_cv < reading.stats.median_cv:
            reading = again
    metrics.update(reading.stats.metrics())
    metrics["latency_remeasured"] = float(remeasured)
    metrics.update(reading.extra)
    tags = {
        "onnx_ops": ",".join(onnx_op_types(onnx_path)),
        "onnx_opset": str(onnx_opset(onnx_path)),
        "latency_converged": str(reading.stats.converged).lower(),
        **reading.tags,
    }
    return metrics, tags


def onnx_accuracy(onnx_path: Path, task: Task) -> float:
    """``task.metric`` of an ONNX file run in ONNX Runtime on the task's validation data."""
    return _accuracy(cpu_session(onnx_path, threads=1), task)


def cpu_session(
    model: Path | bytes, *, threads: int, optimized: bool = True
) -> ort.InferenceSession:
    """An ONNX Runtime CPU session as the meter runs artifacts: ``threads`` intra-op threads,
    sequential. ``optimized=False``: graph optimizations off, so a QDQ file runs its own math in
    float instead of fused int8 kernels (``trials._int8_fidelity``)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimized
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _accuracy(session: ort.InferenceSession, task: Task) -> float:
    return _accuracy_and_count(session, task)[0]


def _accuracy_and_count(session: ort.InferenceSession, task: Task) -> tuple[float, int]:
    """``task.metric`` on the validation data, and how many samples that data holds."""
    x, y = checked_data(task, "val")
    name = session.get_inputs()[0].name
    inputs = x.numpy()
    logits = np.concatenate(
        [
            session.run(None, {name: inputs[i : i + _EVAL_BATCH]})[0]
            for i in range(0, len(inputs), _EVAL_BATCH)
        ]
    )
    return float(task.metric(logits, y.numpy())), len(y)


def _batch_one(example: np.ndarray) -> np.ndarray:
    if example.ndim == 0 or example.shape[0] != 1:
        raise TaskError(
            f"the example input for latency must have batch size 1, got shape {example.shape}. "
            "Fix: return x[:1] from the task's example_input()."
        )
    return example


def _block_median_cv(times_ms: np.ndarray, block: int) -> float:
    """CV of the medians of consecutive blocks of ``block`` runs (a short last block is left
    out); ``inf`` with fewer than two blocks."""
    count = len(times_ms) // block
    if count < 2:
        return math.inf
    medians = np.median(times_ms[: count * block].reshape(count, block), axis=1)
    mean = float(np.mean(medians))
    return float(np.std(medians, ddof=1)) / mean if mean > 0 else 0.0


def _artifact_files(path: Path) -> list[Path]:
    """The ONNX file and the external-data files it references (none for slimtune's own)."""
    model = onnx.load(str(path), load_external_data=False)
    extra: set[str] = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            extra.update(e.value for e in tensor.external_data if e.key == "location")
    return [path, *(path.parent / name for name in sorted(extra))]
