"""Measurement of an exported artifact in ONNX Runtime: accuracy, size on disk, latency."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from trials._errors import TaskError
from trials._export import onnx_op_types, onnx_opset
from trials._settings import TrialSettings
from trials._task import Task, checked_data

_EVAL_BATCH = 256
# The compressed size is gzip at level 9. On the digits CNN at 50 % sparsity level 9 takes
# ~1.2 s per file (level 6: 0.15 s, 2 % larger): deflate's longest match search is slow on runs
# of zeros. Kept at 9 so the figure is the best plain gzip can do.
_GZIP_LEVEL = 9


def measure_onnx(
    onnx_path: Path, task: Task, settings: TrialSettings
) -> tuple[dict[str, float], dict[str, str]]:
    """Measure an ONNX artifact as deployed.

    - ``accuracy``: ``task.metric`` of ONNX Runtime's outputs on the validation data;
    - ``size_bytes``: bytes of the artifact (the file, plus any external-data files it names);
      ``size_gzip_bytes``: the same bytes gzipped at level 9 (where unstructured sparsity shows);
    - ``latency_ms`` (median), ``latency_p90_ms``, ``latency_mean_ms``, ``latency_std_ms``,
      ``latency_cv``: batch-1 runs on ``task.example_input()`` in a session with
      ``settings.latency_threads`` intra-op threads, one inter-op thread and sequential execution,
      after ``settings.latency_warmup`` untimed runs, over ``settings.latency_repeats`` timed runs.

    Returns ``(metrics, tags)``; tags give ``onnx_ops`` and ``onnx_opset``.
    """
    session = _session(onnx_path, threads=settings.latency_threads)
    metrics: dict[str, float] = {"accuracy": _accuracy(session, task)}

    data = b"".join(p.read_bytes() for p in _artifact_files(onnx_path))
    metrics["size_bytes"] = float(len(data))
    metrics["size_gzip_bytes"] = float(len(gzip.compress(data, compresslevel=_GZIP_LEVEL, mtime=0)))

    example = task.example_input().float().numpy()
    if example.shape[0] != 1:
        raise TaskError(
            f"task {task.name!r}: example_input() must have batch size 1, got shape "
            f"{example.shape}. Fix: return x[:1]."
        )
    times_ms = _latencies_ms(
        session, example, warmup=settings.latency_warmup, repeats=settings.latency_repeats
    )
    mean = float(np.mean(times_ms))
    std = float(np.std(times_ms, ddof=1))
    metrics.update(
        latency_ms=float(np.median(times_ms)),
        latency_p90_ms=float(np.percentile(times_ms, 90)),
        latency_mean_ms=mean,
        latency_std_ms=std,
        latency_cv=std / mean if mean > 0 else 0.0,
    )
    tags = {
        "onnx_ops": ",".join(onnx_op_types(onnx_path)),
        "onnx_opset": str(onnx_opset(onnx_path)),
    }
    return metrics, tags


def onnx_accuracy(onnx_path: Path, task: Task) -> float:
    """``task.metric`` of an ONNX file run in ONNX Runtime on the task's validation data."""
    return _accuracy(_session(onnx_path, threads=1), task)


def _session(path: Path, *, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _accuracy(session: ort.InferenceSession, task: Task) -> float:
    x, y = checked_data(task, "val")
    name = session.get_inputs()[0].name
    inputs = x.numpy()
    logits = np.concatenate(
        [
            session.run(None, {name: inputs[i : i + _EVAL_BATCH]})[0]
            for i in range(0, len(inputs), _EVAL_BATCH)
        ]
    )
    return float(task.metric(logits, y.numpy()))


def _latencies_ms(
    session: ort.InferenceSession, example: np.ndarray, *, warmup: int, repeats: int
) -> np.ndarray:
    name = session.get_inputs()[0].name
    feed = {name: np.ascontiguousarray(example)}
    for _ in range(warmup):
        session.run(None, feed)
    times = np.empty(repeats, dtype=np.float64)
    for i in range(repeats):
        start = time.perf_counter_ns()
        session.run(None, feed)
        times[i] = time.perf_counter_ns() - start
    return times / 1e6


def _artifact_files(path: Path) -> list[Path]:
    """The ONNX file and the external-data files it references (none for slimtune's own)."""
    model = onnx.load(str(path), load_external_data=False)
    extra: set[str] = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            extra.update(e.value for e in tensor.external_data if e.key == "location")
    return [path, *(path.parent / name for name in sorted(extra))]
