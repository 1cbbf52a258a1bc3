"""One trial: prune, fine-tune, quantize, export and measure; and the dense baseline it is
compared against."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from searchspace import TrialParams
from trials._baseline import ensure_baseline, load_baseline_model
from trials._compress import (
    Prunable,
    attach,
    bake,
    global_magnitude_masks,
    packed_size_bytes,
    param_counts,
    prunable_layers,
    weight_sparsity,
    zero_weights,
)
from trials._errors import PruningError, TaskError
from trials._export import INT8_FORMAT, export_onnx, quantize_int8
from trials._measure import measure_onnx
from trials._settings import TrialResult, TrialSettings
from trials._task import Task, checked_data
from trials._train import fit, predict

TRIAL_ONNX = "model.onnx"
BASELINE_ONNX = "baseline.onnx"


def run_trial(task: Task, params: TrialParams, settings: TrialSettings) -> TrialResult:
    """Compress the task's baseline as ``params`` say and measure the exported artifact.

    1. Load the cached dense baseline (training it first if needed).
    2. Global magnitude pruning: the ``params.sparsity`` smallest |w| over all Conv/Linear
       weights together are masked to zero; the mask stays fixed.
    3. Fine-tune ``settings.epochs`` epochs with Adam (``params.lr``, ``params.batch_size``,
       shuffling seeded by ``settings.seed``); below 32 bits, weights are fake-quantized per
       output channel at ``params.bits`` with straight-through gradients.
    4. Bake masks and quantized weights into plain weights; check the pruned ones are zero.
    5. Export: 32 bits -> fp32 ONNX; 8 bits -> ONNX Runtime static QDQ int8 (real);
       2-7 bits -> fp32 ONNX holding the fake-quantized weights (``artifact=simulated``).
    6. Measure the file in ONNX Runtime (``measure_onnx``).

    The ONNX file is ``settings.work_dir / "model.onnx"``.
    """
    start = time.perf_counter()
    what = (
        f"trial of task {task.name!r} (lr={params.lr:g}, batch_size={params.batch_size}, "
        f"sparsity={params.sparsity:g}, bits={params.bits})"
    )
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    baseline = ensure_baseline(task, seed=settings.seed, cache_dir=settings.cache_dir)
    x_train, y_train = checked_data(task, "train")

    # fork_rng: anything random in the model (dropout) is seeded without touching the caller's
    # global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = load_baseline_model(task, baseline)
        layers = prunable_layers(model)
        if not layers:
            raise TaskError(
                f"{what}: the model must have Conv or Linear layers to prune and quantize, but "
                f"{type(model).__name__} has none. Fix: use a model built from nn.Conv*d/nn.Linear."
            )
        masks = global_magnitude_masks(layers, params.sparsity)
        if params.sparsity > 0 or params.bits < 32:
            attach(layers, masks, params.bits)
        train_seconds = fit(
            model,
            x_train,
            y_train,
            epochs=settings.epochs,
            lr=params.lr,
            batch_size=params.batch_size,
            seed=settings.seed,
            what=what,
        )
    bake(layers, masks)
    _check_sparsity(layers, masks, params.sparsity, what=what)

    onnx_path = settings.work_dir / TRIAL_ONNX
    export_start = time.perf_counter()
    if params.bits == 8:
        fp32_path = settings.work_dir / "model.fp32.onnx"
        try:
            export_onnx(model, task.example_input().float(), fp32_path, what=what)
            quantize_int8(fp32_path, onnx_path, _calibration(x_train, settings), what=what)
        finally:
            fp32_path.unlink(missing_ok=True)
        tags = {"artifact": "real", "format": INT8_FORMAT, "quantization": "static-qdq"}
    else:
        export_onnx(model, task.example_input().float(), onnx_path, what=what)
        if params.bits == 32:
            tags = {"artifact": "real", "format": "fp32", "quantization": "none"}
        else:
            tags = {
                "artifact": "simulated",
                "format": f"fp32-baked-{params.bits}bit",
                "quantization": "fake-quant-baked",
            }
    export_seconds = time.perf_counter() - export_start
    return _measured(
        model,
        task,
        settings,
        onnx_path,
        bits=params.bits,
        tags=tags,
        train_seconds=train_seconds,
        export_seconds=export_seconds,
        start=start,
    )


def run_baseline(task: Task, settings: TrialSettings) -> TrialResult:
    """The dense fp32 baseline, exported and measured like a trial: the reference every trial
    is compared against. Its ONNX file is ``settings.work_dir / "baseline.onnx"``;
    ``train_seconds`` is the time the baseline took to train (also when it came from the cache).
    """
    start = time.perf_counter()
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    baseline = ensure_baseline(task, seed=settings.seed, cache_dir=settings.cache_dir)
    model = load_baseline_model(task, baseline)
    onnx_path = settings.work_dir / BASELINE_ONNX
    export_start = time.perf_counter()
    export_onnx(model, task.example_input().float(), onnx_path, what=f"baseline of {task.name!r}")
    export_seconds = time.perf_counter() - export_start
    tags = {
        "artifact": "real",
        "format": "fp32",
        "quantization": "none",
        "baseline_cached": str(baseline.cached).lower(),
    }
    return _measured(
        model,
        task,
        settings,
        onnx_path,
        bits=32,
        tags=tags,
        train_seconds=baseline.train_seconds,
        export_seconds=export_seconds,
        start=start,
    )


def _measured(
    model: nn.Module,
    task: Task,
    settings: TrialSettings,
    onnx_path: Path,
    *,
    bits: int,
    tags: dict[str, str],
    train_seconds: float,
    export_seconds: float,
    start: float,
) -> TrialResult:
    x_val, y_val = checked_data(task, "val")
    torch_accuracy = float(task.metric(predict(model, x_val), y_val.numpy()))
    layers = prunable_layers(model)
    nonzero, total = param_counts(model)
    metrics, onnx_tags = measure_onnx(onnx_path, task, settings)
    metrics.update(
        torch_accuracy=torch_accuracy,
        nonzero_params=float(nonzero),
        total_params=float(total),
        sparsity_achieved=weight_sparsity(layers),
        size_packed_bytes=float(packed_size_bytes(model, bits)),
        train_seconds=train_seconds,
        export_seconds=export_seconds,
    )
    metrics["trial_seconds"] = time.perf_counter() - start
    all_tags = {
        **tags,
        **onnx_tags,
        "task": task.name,
        "exporter": "torch.onnx.export(dynamo=True)",
    }
    return TrialResult(metrics=metrics, tags=all_tags, onnx_path=onnx_path)


def _check_sparsity(
    layers: list[Prunable], masks: list[torch.Tensor], requested: float, *, what: str
) -> None:
    pruned = sum(int((~m).sum()) for m in masks)
    zeros, total = zero_weights(layers)
    if zeros < pruned:
        raise PruningError(
            f"{what}: the achieved weight sparsity must be at least the requested {requested:g}, "
            f"but only {zeros} of {total} weights are zero ({pruned} pruned). "
            "Fix: report this as a slimtune bug."
        )


def _calibration(x_train: torch.Tensor, settings: TrialSettings) -> np.ndarray:
    generator = torch.Generator().manual_seed(settings.seed)
    count = min(settings.calibration_samples, len(x_train))
    idx = torch.randperm(len(x_train), generator=generator)[:count]
    return x_train[idx].numpy()
