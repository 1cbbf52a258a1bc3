"""One trial: prune, fine-tune, quantize, export and measure; and the dense baseline it is
compared against."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from searchspace import SIMULATED_BITS, TrialParams
from trials._artifact_weights import artifact_sparsity
from trials._attention import rewrite_multihead_attention
from trials._baseline import ensure_baseline, load_baseline_model
from trials._compress import (
    GradualPruning,
    Prunable,
    attach,
    bake,
    layer_sparsity_text,
    packed_size_bytes,
    param_counts,
    prunable_layers,
    round_to_grid,
    zero_weights,
)
from trials._device import device_data, device_description, prepare_device, training_device
from trials._early import RungHook, RungReporter, measure_first
from trials._errors import PruningError, TaskError
from trials._export import (
    FP16_FORMAT,
    convert_fp16,
    export_onnx,
    quantize_int4,
    quantize_int8,
)
from trials._export_check import ExportClaim, check_export
from trials._measure import LatencyMeter, measure_onnx
from trials._quantize import (
    DEFAULT_INT8_FORMAT,
    INT4_COMPUTE,
    INT4_FORMAT,
    INT4_GRID,
    WeightGrid,
    weight_grid,
)
from trials._quantize_auto import Int8Choice, Int8Subject, choose_int8_format, resolved_choice
from trials._record import weights_sha256
from trials._settings import Baseline, Lineage, PruningLog, TrialResult, TrialSettings
from trials._structured import StructuredPruning, output_units, prune_structured
from trials._tables import describe_tables, embedding_layers, table_grid
from trials._task import Task, checked_data
from trials._train import Distillation, fit, predict, steps_per_epoch

TRIAL_ONNX = "model.onnx"
BASELINE_ONNX = "baseline.onnx"


def run_trial(
    task: Task,
    params: TrialParams,
    settings: TrialSettings,
    *,
    meter: LatencyMeter | None = None,
    rungs: RungReporter | None = None,
) -> TrialResult:
    """Compress the task's baseline as ``params`` say and measure the exported artifact.

    1. Load the cached dense baseline (training it first if needed).
    2. Prune, by ``params.pruning``:
       - ``unstructured``: global magnitude pruning over all Conv/Linear weights together,
         gradual during fine-tuning on Zhu & Gupta's cubic schedule (0 -> ``params.sparsity``
         over the first two thirds of the steps, masks recomputed about 10 times, then the final
         mask is fixed); with ``epochs=0`` it is one-shot.
       - ``structured``: ``params.sparsity`` of the output channels/neurons of every Conv/Linear
         layer but the last are removed (torch-pruning, uniform per layer) before fine-tuning.
         Attention modules lose whole heads instead (``trials._heads``; tag ``pruning_heads``).
       Every ``nn.MultiheadAttention`` is first rewritten on four ``nn.Linear`` (same outputs,
       checked; tag ``attention_rewrite``) so that every knob reaches its projections.
    3. Fine-tune ``settings.epochs`` epochs with Adam (``params.lr``, ``params.batch_size``,
       shuffling seeded by ``settings.seed``); at 2-8 bits with ``params.quant_scheme`` qat the
       weights are fake-quantized on the exported grid (at 8 bits the int8 format's, chosen
       first: ``settings.int8_format``, ``auto`` as the search resolved it in
       ``settings.int8_auto``, or without one timed here once per machine) with
       straight-through gradients, with ptq they train in float; with
       ``params.distill_weight > 0`` the dense baseline is the teacher of a distillation term.
    4. Bake masks and quantized weights into plain weights (ptq: round them to the grid now);
       check the pruned ones are zero.
    5. Export: 32 bits -> fp32 ONNX; 16 -> fp16 ONNX (fp32 inputs/outputs); 8 -> ONNX Runtime
       static QDQ int8 in the chosen format (real); 4 -> int4 weights, MatMulNBits for Linear
       and int4 DequantizeLinear for Conv (real); 2, 3, 5-7 -> fp32 ONNX holding the
       fake-quantized weights (``artifact=simulated``). See docs/quantization.md.
    6. Check that the artifact shows the claimed compression (``check_export``; a mismatch
       raises ``ExportClaimError``), then measure it in ONNX Runtime (``measure_onnx``); its
       latency is timed by ``meter`` (default: in this process, ``trials.InlineMeter``), whose
       ``pause_point`` is called before every training step.

    With ``rungs`` (a search with early stopping), between 2 and 3 the compressed untrained
    model is exported and measured like the final artifact (``trials._early.measure_first``),
    and ``rungs`` gets a ``RungReport`` before training and after every epoch (it may raise to
    stop the trial); the result then also holds the early numbers (``early_*``). The trained
    weights are the same with or without it.

    The ONNX file is ``settings.work_dir / "model.onnx"``. The result's ``lineage`` holds the
    SHA-256 of the baseline's and of the compressed weights and the pruning log: on CPU, the
    same task, knobs, settings and torch thread count give bit-identical weights.
    """
    start = time.perf_counter()
    what = (
        f"trial of task {task.name!r} (pruning={params.pruning}, lr={params.lr:g}, "
        f"batch_size={params.batch_size}, sparsity={params.sparsity:g}, bits={params.bits})"
    )
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    # Once per process: CUDA's set-up and the training data's copy on the device (~0 s after).
    device = training_device(settings.device)
    device_init_seconds = prepare_device(device)
    data_start = time.perf_counter()
    x_fit, y_fit = device_data(task, "train", device)
    data_seconds = time.perf_counter() - data_start
    baseline = ensure_baseline(
        task, seed=settings.dense_seed, cache_dir=settings.cache_dir, device=settings.device
    )
    x_train, _ = checked_data(task, "train")
    example = task.example_input().float()
    tags: dict[str, str] = {
        "pruning": params.pruning,
        "device": device.type,
        "device_name": device_description(device),
    }
    extra: dict[str, float] = {
        "device_init_seconds": device_init_seconds,
        "data_seconds": data_seconds,
    }
    int8 = _int8_choice(task, params, settings, baseline, x_train, example, what=what)
    grid = _export_grid(params.bits, int8)
    train_grid = grid if params.quant_scheme == "qat" else None  # ptq fine-tunes in float

    # fork_rng: anything random in the model (dropout) is seeded without touching the caller's
    # global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = load_baseline_model(task, baseline)
        baseline_sha256 = weights_sha256(model)
        rewrite = rewrite_multihead_attention(model)
        if rewrite.rewritten or rewrite.kept:
            tags["attention_rewrite"] = rewrite.tag()
        if not prunable_layers(model):
            raise TaskError(
                f"{what}: the model must have Conv or Linear layers to prune and quantize, but "
                f"{type(model).__name__} has none. Fix: use a model built from nn.Conv*d/nn.Linear."
            )
        dense_units = output_units(model)
        structured: StructuredPruning | None = None
        if params.pruning == "structured":
            structured = prune_structured(
                model, example, params.sparsity, what=what, round_to=settings.pruning_round_to
            )
            tags["pruning_widths"] = ",".join(str(w) for w in structured.widths)
            tags["pruning_round_to"] = str(settings.pruning_round_to)
            if params.sparsity > 0 and structured.removed == 0:
                tags["pruning_effect"] = (
                    f"none: ratio {params.sparsity:g} removes no unit at round_to "
                    f"{settings.pruning_round_to}"
                )
            if structured.heads:
                tags["pruning_heads"] = structured.attention_tag()
        layers = prunable_layers(model)
        masks = [torch.ones_like(layer.weight, dtype=torch.bool) for layer in layers]
        schedule: GradualPruning | None = None
        if params.pruning == "unstructured" and params.sparsity > 0:
            attach(layers, masks, grid=train_grid)
            total_steps = settings.epochs * steps_per_epoch(len(x_train), params.batch_size)
            schedule = GradualPruning(
                layers, params.sparsity, total_steps, scope=params.pruning_scope
            )
        elif train_grid is not None:
            attach(layers, masks, grid=train_grid)
        tables = embedding_layers(model)  # stored per row at <= 8 bits (trials._tables)
        rows = table_grid(params.bits) if grid is not None else None
        if rows is not None and train_grid is not None:
            attach(tables, [torch.ones_like(t.weight, dtype=torch.bool) for t in tables], grid=rows)
        distill = None
        if params.distill_weight > 0:
            distill = Distillation(
                load_baseline_model(task, baseline),
                params.distill_weight,
                params.distill_temperature,
            )
            tags["distill"] = f"weight={params.distill_weight:g},T={params.distill_temperature:g}"
        hook: RungHook | None = None
        if rungs is not None:
            ptq_grid = grid if train_grid is None else None
            early = measure_first(
                model,
                unstructured_target=params.sparsity if schedule is not None else 0.0,
                ptq_grid=ptq_grid,
                export=lambda m, path: _export_artifact(
                    m, example, path, params, int8, _calibration(x_train, settings), what=what
                ),
                task=task,
                settings=settings,
                meter=meter,
            )
            hook = RungHook(model, task, early, rungs, start=start, ptq_grid=ptq_grid)
            hook.before_training()
        train_seconds = fit(
            model,
            x_fit,
            y_fit,
            epochs=settings.epochs,
            lr=params.lr,
            batch_size=params.batch_size,
            seed=settings.seed,
            what=what,
            on_step=_step_hook(schedule, meter),
            distill=distill,
            on_epoch=hook,
        )
        if schedule is not None:
            masks = schedule.finish()
            tags["pruning_schedule"] = (
                f"cubic, ramp {schedule.ramp_steps} steps, mask every {schedule.every}"
            )
            tags["pruning_history"] = ",".join(f"{st}:{sp:.3f}" for st, sp in schedule.history)
            tags["pruning_scope"] = params.pruning_scope
            tags["layer_sparsity"] = layer_sparsity_text(model, layers)
    bake(layers, masks)
    bake(tables, [torch.ones_like(t.weight, dtype=torch.bool) for t in tables])
    if grid is not None and train_grid is None:
        round_to_grid(layers, grid)  # ptq: the weight half of post-training quantization
        if rows is not None:
            round_to_grid(tables, rows)
    _check_sparsity(layers, masks, params.sparsity if schedule else 0.0, what=what)
    lineage = Lineage(
        baseline_seed=settings.dense_seed,
        baseline_sha256=baseline_sha256,
        weights_sha256=weights_sha256(model),
        pruning=_pruning_log(params, settings, len(x_train), schedule, structured),
        int8_format=int8.fmt.name if int8 is not None else None,
    )
    units = output_units(model)
    extra.update(
        output_units=float(units),
        dense_output_units=float(dense_units),
        channel_sparsity_achieved=1.0 - units / dense_units if dense_units else 0.0,
    )

    onnx_path = settings.work_dir / TRIAL_ONNX
    export_start = time.perf_counter()
    tags.update(
        _export_artifact(
            model, example, onnx_path, params, int8, _calibration(x_train, settings), what=what
        )
    )
    described = describe_tables(model, params.bits)
    if described is not None:
        tags["embeddings"] = described.tag()
    claim = ExportClaim(
        bits=params.bits,
        units=units,
        dense_units=dense_units,
        structured=structured is not None and structured.removed > 0,
        int8_format=int8.fmt.name if int8 is not None else None,
        keep_float=settings.keep_float,
    )
    tags.update(check_export(onnx_path, claim, what=what, example=example.numpy()))
    export_seconds = time.perf_counter() - export_start
    result = _measured(
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
        meter=meter,
    )
    result.tags.update(_pruning_effect(params, result.metrics["sparsity_achieved"]))
    result = dataclasses.replace(result, lineage=lineage)
    return hook.early.merged_into(result) if hook is not None else result


def run_baseline(
    task: Task, settings: TrialSettings, *, meter: LatencyMeter | None = None
) -> TrialResult:
    """The dense fp32 baseline, exported and measured like a trial: the reference every trial
    is compared against. Its ONNX file is ``settings.work_dir / "baseline.onnx"``;
    ``train_seconds`` is the time the baseline took to train (also when it came from the cache).
    A search passes the ``meter`` its trials use, so that all latencies are comparable.
    """
    start = time.perf_counter()
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    baseline = ensure_baseline(
        task, seed=settings.seed, cache_dir=settings.cache_dir, device=settings.device
    )
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
        "device": baseline.device,
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
        meter=meter,
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
    meter: LatencyMeter | None,
) -> TrialResult:
    x_val, y_val = checked_data(task, "val")
    torch_accuracy = float(task.metric(predict(model, x_val), y_val.numpy()))
    nonzero, total = param_counts(model)
    metrics, onnx_tags = measure_onnx(onnx_path, task, settings, meter=meter)
    metrics.update(
        torch_accuracy=torch_accuracy,
        nonzero_params=float(nonzero),
        total_params=float(total),
        sparsity_achieved=artifact_sparsity(onnx_path),
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


def _pruning_effect(params: TrialParams, achieved: float) -> dict[str, str]:
    """The tag ``pruning_effect`` when unstructured pruning left under half the requested
    sparsity in the artifact: it prunes Conv/Linear weights only, and the model keeps most of
    its weights elsewhere (a GRU, an embedding, attention's in_proj)."""
    if params.pruning != "unstructured" or params.sparsity <= 0:
        return {}
    if achieved >= 0.5 * params.sparsity:
        return {}
    return {
        "pruning_effect": (
            f"partial: sparsity {params.sparsity:g} requested, {achieved:.3f} of the artifact's "
            "weights are zero; only Conv/Linear weights are pruned"
        )
    }


def _step_hook(
    schedule: GradualPruning | None, meter: LatencyMeter | None
) -> Callable[[int, int], None] | None:
    """Before each training step: the pruning schedule, then the meter's pause point (where a
    latency measurement on this machine may hold the trial)."""
    if meter is None:
        return schedule

    def hook(step: int, total_steps: int) -> None:
        if schedule is not None:
            schedule(step, total_steps)
        meter.pause_point()

    return hook


def _pruning_log(
    params: TrialParams,
    settings: TrialSettings,
    n_train: int,
    schedule: GradualPruning | None,
    structured: StructuredPruning | None,
) -> PruningLog:
    log = PruningLog(scheme=params.pruning, target=params.sparsity)
    if schedule is not None:
        log = dataclasses.replace(
            log,
            total_steps=settings.epochs * steps_per_epoch(n_train, params.batch_size),
            ramp_steps=schedule.ramp_steps,
            every=schedule.every,
            history=tuple(schedule.history),
        )
    if structured is not None:
        log = dataclasses.replace(log, widths=structured.widths)
    return log


def _int8_choice(
    task: Task,
    params: TrialParams,
    settings: TrialSettings,
    baseline: Baseline,
    x_train: torch.Tensor,
    example: torch.Tensor,
    *,
    what: str,
) -> Int8Choice | None:
    """The int8 format of an 8-bit trial, before fine-tuning (qat trains on its grid):
    ``settings.int8_format``, where ``auto`` is the search's resolution (``settings.int8_auto``,
    timed by its latency meter) or, for a trial run without a search, timed here on the dense
    model once per machine and cached."""
    if params.bits != 8:
        return None
    if settings.int8_format == "auto" and settings.int8_auto is not None:
        return resolved_choice(settings.int8_auto)
    return choose_int8_format(
        settings.int8_format,
        task_name=task.name,
        dense=load_baseline_model(task, baseline),
        example=example,
        calibration=_calibration(x_train, settings),
        cache_dir=settings.cache_dir,
        what=what,
    )


def int8_subject(task: Task, settings: TrialSettings) -> Int8Subject:
    """What ``int8_format: auto`` times for ``settings``: the dense baseline the trials compress
    (trained now if not cached), the task's example input and the calibration data of
    ``settings.seed``."""
    baseline = ensure_baseline(
        task, seed=settings.dense_seed, cache_dir=settings.cache_dir, device=settings.device
    )
    x_train, _ = checked_data(task, "train")
    return Int8Subject(
        task_name=task.name,
        dense=load_baseline_model(task, baseline),
        example=task.example_input().float(),
        calibration=_calibration(x_train, settings),
    )


def _export_grid(bits: int, int8: Int8Choice | None) -> WeightGrid | None:
    """The weight grid of the exported artifact (and of qat's fake quantization): the int8
    format's at 8 bits, ``INT4_GRID`` at 4, the default grid of 2, 3, 5-7; None above 8."""
    if bits == 8 and int8 is not None:
        return int8.fmt.grid
    if bits == 4:
        return INT4_GRID
    return weight_grid(bits) if bits < 8 else None


def _export_artifact(
    model: nn.Module,
    example: torch.Tensor,
    onnx_path: Path,
    params: TrialParams,
    int8: Int8Choice | None,
    calibration: np.ndarray,
    *,
    what: str,
) -> dict[str, str]:
    """Write the trial's artifact for ``params.bits`` and return the tags that say what it is:
    ``artifact`` (real or simulated), ``format``, ``quantization``, ``quant_scheme`` (qat, ptq;
    none at 16 and 32 bits), and what the CPU kernel computes in where that is not the format."""
    scheme = params.quant_scheme if params.bits <= 8 else "none"
    if params.bits in (32, *SIMULATED_BITS):
        export_onnx(model, example, onnx_path, what=what)
        if params.bits == 32:
            return {
                "artifact": "real",
                "format": "fp32",
                "quantization": "none",
                "quant_scheme": scheme,
            }
        return {
            "artifact": "simulated",
            "format": f"fp32-baked-{params.bits}bit",
            "quantization": "fake-quant-baked",
            "quant_scheme": scheme,
        }
    fp32_path = onnx_path.with_name(onnx_path.stem + ".fp32.onnx")
    try:
        export_onnx(model, example, fp32_path, what=what)
        if params.bits == 8:
            fmt = int8.fmt if int8 is not None else DEFAULT_INT8_FORMAT
            quantize_int8(fp32_path, onnx_path, calibration, what=what, fmt=fmt)
            return {
                "artifact": "real",
                "format": fmt.tag,
                "quantization": "static-qdq",
                "quant_scheme": scheme,
                **(int8.tags() if int8 is not None else {"int8_format": fmt.name}),
            }
        if params.bits == 4:
            written = quantize_int4(fp32_path, onnx_path, what=what)
            return {
                "artifact": "real",
                "format": INT4_FORMAT,
                "quantization": "int4-weight-only",
                "quant_scheme": scheme,
                "int4_layers": f"matmulnbits={written.matmulnbits},dequantize={written.dequantize}",
                "int4_compute": INT4_COMPUTE,
            }
        casts = convert_fp16(fp32_path, onnx_path, what=what)
        return {
            **(
                {"fp16_casts": f"{casts} float32 Casts of the model now cast to float16"}
                if casts
                else {}
            ),
            "artifact": "real",
            "format": FP16_FORMAT,
            "quantization": "fp16",
            "quant_scheme": scheme,
            "fp16_compute": "ONNX Runtime's CPU provider casts fp16 to fp32 and computes in fp32",
        }
    finally:
        fp32_path.unlink(missing_ok=True)


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
