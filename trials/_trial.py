"""One trial: prune, fine-tune, quantize, export and measure; and the dense baseline it is
compared against."""

from __future__ import annotations

import dataclasses
import time

import torch

from searchspace import TrialParams
from trials._attention import rewrite_multihead_attention
from trials._baseline import ensure_baseline, load_baseline_model
from trials._compress import (
    GradualPruning,
    bake,
    layer_sparsity_text,
    packed_size_bytes,
    prunable_layers,
)
from trials._device import device_data, device_description, prepare_device, training_device
from trials._early import RungHook, RungReporter, measure_first
from trials._errors import TaskError
from trials._export import export_onnx
from trials._export_check import ExportClaim, check_export
from trials._extra_weights import extra_weights
from trials._fingerprints import weights_sha256
from trials._measure import LatencyMeter
from trials._plan_choose import PlanChooser
from trials._plan_export import check_artifact, weight_names
from trials._plan_tags import measured_plan_tags, plan_tags, write_plan
from trials._rung_state import RungState, start_rungs
from trials._settings import Lineage, TrialResult, TrialSettings
from trials._structured import output_units
from trials._tables import describe_tables, embedding_layers, table_grid
from trials._task import Task, checked_data
from trials._train import Distillation, FitState, fit, steps_per_epoch
from trials._trial_export import (
    calibration,
    export_artifact,
    int8_choice,
    int8_subject,
    layer_grid,
)
from trials._trial_measure import measured_result
from trials._trial_steps import (
    attach_grids,
    check_sparsity,
    layer_names,
    layer_width,
    plan_packed_bytes,
    pruning_effect,
    pruning_log,
    round_to_grids,
    step_hook,
    structured_step,
)

__all__ = ["int8_subject", "run_baseline", "run_trial"]

TRIAL_ONNX = "model.onnx"
BASELINE_ONNX = "baseline.onnx"


def run_trial(
    task: Task,
    params: TrialParams,
    settings: TrialSettings,
    *,
    meter: LatencyMeter | None = None,
    rungs: RungReporter | None = None,
    resume: RungState | None = None,
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
    weights are the same with or without it. ``resume`` (a ``trials.RungState`` the trial
    saved at a rung, through a report's ``save``) makes a retried trial go on after that
    rung's epoch (tag ``resumed_at_epoch``); on the CPU its weights are those of a trial that
    never stopped.

    The ONNX file is ``settings.work_dir / "model.onnx"``. The result's ``lineage`` holds the
    SHA-256 of the baseline's and of the compressed weights and the pruning log: on CPU, the
    same task, knobs, settings and torch thread count give bit-identical weights.
    """
    start = time.perf_counter()
    if resume is not None and rungs is None:
        raise ValueError("run_trial(resume=...) needs rungs: a state is saved at a rung")
    what = (
        f"trial of task {task.name!r} (pruning={params.pruning}, lr={params.lr:g}, "
        f"batch_size={params.batch_size}, sparsity={params.sparsity:g}, "
        + (f"plan=mixed, budget={params.budget:g})" if params.plan == "mixed" else "")
        + (f"bits={params.bits})" if params.plan != "mixed" else "")
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
    inputs = calibration(x_train, settings)
    tags: dict[str, str] = {
        "pruning": params.pruning,
        "device": device.type,
        "device_name": device_description(device),
    }
    extra: dict[str, float] = {
        "device_init_seconds": device_init_seconds,
        "data_seconds": data_seconds,
    }
    int8 = int8_choice(task, params, settings, baseline, x_train, example, what=what)

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
        dense_widths = [layer_width(layer) for layer in prunable_layers(model)]
        dense_names = layer_names(model, prunable_layers(model))
        chooser = PlanChooser(
            task, params, settings, baseline_sha256, int8, inputs, example, what=what, meter=meter
        )
        chooser.measure_dense(model)  # sensitivity of the dense model (mixed plans; cached)
        shares = chooser.allocate_widths(model)  # mixed + structured: per-layer kept widths
        structured = structured_step(
            model, example, params, settings, tags, what=what, shares=shares
        )
        layers = prunable_layers(model)
        plan = chooser.choose(model, layers, dense_widths)
        tags.update(plan_tags(plan))
        extra_w = extra_weights(model, example, plan.uniform_bits or 32, settings.keep_float)
        grids = [layer_grid(setting, int8) for _, setting in plan.layers]
        qat = params.quant_scheme == "qat"
        train_grids = grids if qat else [None] * len(grids)  # ptq fine-tunes in float
        masks = [torch.ones_like(layer.weight, dtype=torch.bool) for layer in layers]
        schedule: GradualPruning | None = None
        if params.pruning == "unstructured" and params.sparsity > 0:
            attach_grids(layers, masks, train_grids)
            total_steps = settings.epochs * steps_per_epoch(len(x_train), params.batch_size)
            schedule = GradualPruning(
                layers, params.sparsity, total_steps, scope=params.pruning_scope
            )
        elif any(g is not None for g in train_grids):
            attach_grids(layers, masks, train_grids)
        extra_w.attach(model)  # simulated widths: ConvTranspose kernels, own matrices
        # Embedding tables are stored per row at <= 8 bits in uniform plans (trials._tables);
        # a mixed plan leaves them float.
        tables = embedding_layers(model)
        table_masks = [torch.ones_like(t.weight, dtype=torch.bool) for t in tables]
        rows = table_grid(params.bits) if plan.kind == "uniform" and any(grids) else None
        if rows is not None and qat and tables:
            attach_grids(tables, table_masks, [rows] * len(tables))
        distill = None
        if params.distill_weight > 0:
            distill = Distillation(
                load_baseline_model(task, baseline),
                params.distill_weight,
                params.distill_temperature,
            )
            tags["distill"] = f"weight={params.distill_weight:g},T={params.distill_temperature:g}"
        hook: RungHook | None = None
        fit_state: FitState | None = None
        if rungs is not None:
            ptq_grids = None if qat or not any(grids) else grids
            hook, fit_state = start_rungs(
                model,
                task,
                params,
                settings,
                rungs,
                measure=lambda: measure_first(
                    model,
                    unstructured_target=params.sparsity if schedule is not None else 0.0,
                    ptq_grid=ptq_grids,
                    export=lambda m, path: export_artifact(
                        m, example, path, params, plan, int8, inputs, what=what
                    ),
                    task=task,
                    settings=settings,
                    meter=meter,
                    extra_weights=extra_w,
                ),
                schedule=schedule,
                ptq_grid=ptq_grids,
                start=start,
                resume=resume,
            )
            if resume is not None:
                tags["resumed_at_epoch"] = str(resume.epoch)
        train_seconds = fit(
            model,
            x_fit,
            y_fit,
            epochs=settings.epochs,
            lr=params.lr,
            batch_size=params.batch_size,
            seed=settings.seed,
            what=what,
            on_step=step_hook(schedule, meter),
            distill=distill,
            on_epoch=hook,
            state=fit_state,
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
    bake(tables, table_masks)
    if not qat:
        round_to_grids(layers, grids)  # ptq: the weight half of post-training quantization
        round_to_grids(tables, [rows] * len(tables))
    extra_w.bake(model)
    tags.update(extra_w.tag())
    check_sparsity(layers, masks, params.sparsity if schedule else 0.0, what=what)
    lineage = Lineage(
        baseline_seed=settings.dense_seed,
        baseline_sha256=baseline_sha256,
        weights_sha256=weights_sha256(model),
        pruning=pruning_log(params, settings, len(x_train), schedule, structured),
        int8_format=int8.fmt.name if int8 is not None and plan.layers_in("int8") else None,
        plan=plan.to_dict() if plan.kind == "mixed" else None,
    )
    units = output_units(model)
    extra.update(
        output_units=float(units),
        dense_output_units=float(dense_units),
        channel_sparsity_achieved=1.0 - units / dense_units if dense_units else 0.0,
    )

    onnx_path = settings.work_dir / TRIAL_ONNX
    export_start = time.perf_counter()
    tags.update(export_artifact(model, example, onnx_path, params, plan, int8, inputs, what=what))
    described = describe_tables(model, params.bits if plan.kind == "uniform" else 32)
    if described is not None:
        tags["embeddings"] = described.tag()
    tags.update(
        check_artifact(
            onnx_path,
            plan,
            units=units,
            dense_units=dense_units,
            structured=structured is not None and structured.removed > 0,
            int8_format=lineage.int8_format,
            keep_float=settings.keep_float,
            what=what,
            example=example.numpy(),
            dense_widths=dict(zip(dense_names, dense_widths, strict=True)),
            rounded=(*weight_names(layer_names(model, layers)), *sorted(extra_w.names())),
        )
    )
    export_seconds = time.perf_counter() - export_start
    result = measured_result(
        model,
        task,
        settings,
        onnx_path,
        packed_bytes=plan_packed_bytes(model, layers, plan, extra_w),
        tags=tags,
        train_seconds=train_seconds,
        export_seconds=export_seconds,
        start=start,
        extra=extra,
        meter=meter,
    )
    result.tags.update(pruning_effect(params, result.metrics["sparsity_achieved"]))
    result.tags.update(
        measured_plan_tags(plan, result.metrics["size_bytes"], result.metrics["latency_ms"])
    )
    write_plan(plan, settings.work_dir)
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
    return measured_result(
        model,
        task,
        settings,
        onnx_path,
        packed_bytes=packed_size_bytes(model, 32),
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
