"""The last step of a trial and of the dense baseline: the exported artifact measured in ONNX
Runtime (``measure_onnx``) next to the PyTorch model's own figures, as a ``TrialResult``."""

from __future__ import annotations

import time
from pathlib import Path

from torch import nn

from trials._artifact_weights import artifact_sparsity
from trials._compress import param_counts
from trials._measure import LatencyMeter, measure_onnx
from trials._settings import TrialResult, TrialSettings
from trials._task import Task, checked_data
from trials._train import predict


def measured_result(
    model: nn.Module,
    task: Task,
    settings: TrialSettings,
    onnx_path: Path,
    *,
    packed_bytes: int,
    tags: dict[str, str],
    train_seconds: float,
    export_seconds: float,
    start: float,
    extra: dict[str, float],
    meter: LatencyMeter | None,
) -> TrialResult:
    """The result of the artifact at ``onnx_path``: ``measure_onnx``'s figures (accuracy, size,
    latency timed by ``meter``), the PyTorch model's accuracy and parameter counts, the
    artifact's sparsity and the times given."""
    x_val, y_val = checked_data(task, "val")
    torch_accuracy = float(task.metric(predict(model, x_val), y_val.numpy()))
    nonzero, total = param_counts(model)
    metrics, onnx_tags = measure_onnx(onnx_path, task, settings, meter=meter)
    metrics.update(
        torch_accuracy=torch_accuracy,
        nonzero_params=float(nonzero),
        total_params=float(total),
        sparsity_achieved=artifact_sparsity(onnx_path),
        size_packed_bytes=float(packed_bytes),
        train_seconds=train_seconds,
        export_seconds=export_seconds,
        **extra,
    )
    metrics["trial_seconds"] = time.perf_counter() - start
    all_tags = {
        **tags,
        **onnx_tags,
        "task": task.name,
        "exporter": "torch.onnx.export(dynamo=True)",
    }
    return TrialResult(metrics=metrics, tags=all_tags, onnx_path=onnx_path)
