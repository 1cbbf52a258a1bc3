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
    GradualPruning,
    Prunable,
    attach,
    bake,
    packed_size_bytes,
    param_counts,
    prunable_layers,
    weight_sparsity,
    zero_weights,
)
from trials._errors import PruningError, TaskError
from trials._export import FP16_FORMAT, INT8_FORMAT, convert_fp16, export_onnx, quantize_int8
from trials._export_check import ExportClaim, check_export
from trials._measure import measure_onnx
from trials._settings import TrialResult, TrialSettings
from trials._structured import StructuredPruning, output_units, prune_structured
from trials._task import Task, checked_data
from trials._train import Distillation, fit, predict, steps_per_epoch

TRIAL_ONNX = "model.onnx"
BASELINE_ONNX = "baseline.onnx"


def run_trial(task: Task, params: TrialParams, settings: TrialSettings) -> TrialResult:
    """Compress the task's baseline as ``params`` say and measure the exported artifact.

    1. Load the cached dense baseline (training it first if needed).
    2. Prune, by ``params.pruning``:
       - ``unstructured``: global magnitude pruning over all Conv/Linear weights together,
         gradual during fine-tuning on Zhu & Gupta's cubic schedule (0 -> ``params.sparsity``
         over the first two thirds of the steps, masks recomputed about 10 times, then the final
         mask is fixed); with ``epochs=0`` it is one-shot.
       - ``structured``: ``params.sparsity`` of the output channels/neurons of every Conv/Linear
         layer but the last are removed (torch-pruning, uniform per layer) before fine-tuning.
    3. Fine-tune ``settings.epochs`` epochs with Adam (``params.lr``, ``params.batch_size``,
       shuffling seeded by ``settings.seed``); at 2-8 bits weights are fake-quantized per
       output channel with straight-through gradients; with ``params.distill_weight > 0`` the
       dense baseline is the teacher of a distillation term.
    4. Bake masks and quantized weights into plain weights; check the pruned ones are zero.
    5. Export: 32 bits -> fp32 ONNX; 16 -> fp16 ONNX (fp32 inputs/outputs); 8 -> ONNX Runtime
       static QDQ int8 (real); 2-7 -> fp32 ONNX holding the fake-quantized weights
       (``artifact=simulated``).
    6. Check that the artifact shows the claimed compression (``check_export``; a mismatch
       raises ``ExportClaimError``), then measure it in ONNX Runtime (``measure_onnx``).

    The ONNX file is ``settings.work_dir / "model.onnx"``.
    """
    start = time.perf_counter()
    what = (
        f"trial of task {task.name!r} (pruning={params.pruning}, lr={params.lr:g}, "
        f"batch_size={params.batch_size}, sparsity={params.sparsity:g}, bits={params.bits})"
    )
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    baseline = ensure_baseline(task, seed=settings.seed, cache_dir=settings.cache_dir)
    x_train, y_train = checked_data(task, "train")
    example = task.example_input().float()
    tags: dict[str, str] = {"pruning": params.pruning}
    extra: dict[str, float] = {}

    # fork_rng: anything random in the model (dropout) is seeded without touching the caller's
    # global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = load_baseline_model(task, baseline)
        if not prunable_layers(model):
            raise TaskError(
                f"{what}: the model must have Conv or Linear layers to prune and quantize, but "
                f"{type(model).__name__} has none. Fix: use a model built from nn.Conv*d/nn.Linear."
            )
        dense_units = output_units(model)
        structured: StructuredPruning | None = None
        if params.pruning == "structured":
            structured = prune_structured(model, example, params.sparsity, what=what)
            tags["pruning_widths"] = ",".join(str(w) for w in structured.widths)
        layers = prunable_layers(model)
        masks = [torch.ones_like(layer.weight, dtype=torch.bool) for layer in layers]
        schedule: GradualPruning | None = None
        if params.pruning == "unstructured" and params.sparsity > 0:
            attach(layers, masks, params.bits)
            total_steps = settings.epochs * steps_per_epoch(len(x_train), params.batch_size)
            schedule = GradualPruning(layers, params.sparsity, total_steps)
        elif params.bits <= 8:
            attach(layers, masks, params.bits)
        distill = None
        if params.distill_weight > 0:
            distill = Distillation(
                load_baseline_model(task, baseline),
                params.distill_weight,
                params.distill_temperature,
            )
            tags["distill"] = f"weight={params.distill_weight:g},T={params.distill_temperature:g}"
        train_seconds = fit(
            model,
            x_train,
            y_train,
            epochs=settings.epochs,
            lr=params.lr,
            batch_size=params.batch_size,
            seed=settings.seed,
            what=what,
            on_step=schedule,
            distill=distill,
        )
        if schedule is not None:
            masks = schedule.finish()
            tags["pruning_schedule"] = (
                f"cubic, ramp {schedule.ramp_steps} steps, mask every {schedule.every}"
            )
            tags["pruning_history"] = ",".join(f"{st}:{sp:.3f}" for st, sp in schedule.history)
    bake(layers, masks)
    _check_sparsity(layers, masks, params.sparsity if schedule else 0.0, what=what)
    units = output_units(model)
    extra.update(
        output_units=float(units),
        dense_output_units=float(dense_units),
        channel_sparsity_achieved=1.0 - units / dense_units if dense_units else 0.0,
    )

    onnx_path = settings.work_dir / TRIAL_ONNX
    export_start = time.perf_counter()
    if params.bits in (8, 16):
        fp32_path = settings.work_dir / "model.fp32.onnx"
        try:
            export_onnx(model, example, fp32_path, what=what)
            if params.bits == 8:
                quantize_int8(fp32_path, onnx_path, _calibration(x_train, settings), what=what)
            else:
                convert_fp16(fp32_path, onnx_path, what=what)
        finally:
            fp32_path.unlink(missing_ok=True)
        if params.bits == 8:
            tags.update(artifact="real", format=INT8_FORMAT, quantization="static-qdq")
        else:
            tags.update(
                artifact="real",
                format=FP16_FORMAT,
                quantization="fp16",
                fp16_compute="ONNX Runtime's CPU provider casts fp16 to fp32 and computes in fp32",
            )
    else:
        export_onnx(model, example, onnx_path, what=what)
        if params.bits == 32:
            tags.update(artifact="real", format="fp32", quantization="none")
        else:
            tags.update(
                artifact="simulated",
                format=f"fp32-baked-{params.bits}bit",
                quantization="fake-quant-baked",
            )
    claim = ExportClaim(
        bits=params.bits,
        units=units,
        dense_units=dense_units,
        structured=structured is not None and structured.removed > 0,
    )
    tags.update(check_export(onnx_path, claim, what=what))
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
        extra=extra,
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
    what = f"baseline of {task.name!r}"
    export_onnx(model, task.example_input().float(), onnx_path, what=what)
    units = output_units(model)
    tags = {
        "artifact": "real",
        "format": "fp32",
        "quantization": "none",
        "pruning": "none",
        "baseline_cached": str(baseline.cached).lower(),
        **check_export(onnx_path, ExportClaim(bits=32, units=units, dense_units=units), what=what),
    }
    export_seconds = time.perf_counter() - export_start
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
        extra={
            "output_units": float(units),
            "dense_output_units": float(units),
            "channel_sparsity_achieved": 0.0,
        },
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
    extra: dict[str, float],
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
