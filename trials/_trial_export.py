"""A trial's export step: the int8 format it uses, each layer's weight grid, and the artifact
its plan says (uniform: one format for the whole model, as before plans; mixed:
``trials._plan_export``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from searchspace import SIMULATED_BITS, TrialParams
from trials._baseline import ensure_baseline, load_baseline_model
from trials._export import (
    FP16_FORMAT,
    convert_fp16,
    export_onnx,
    quantize_int4,
    quantize_int8,
)
from trials._plan import CompressionPlan, LayerSetting
from trials._plan_export import export_mixed
from trials._quantize import (
    DEFAULT_INT8_FORMAT,
    INT4_COMPUTE,
    INT4_FORMAT,
    INT4_GRID,
    WeightGrid,
    weight_grid,
)
from trials._quantize_auto import Int8Choice, Int8Subject, choose_int8_format, resolved_choice
from trials._settings import Baseline, TrialSettings
from trials._task import Task, checked_data


def int8_choice(
    task: Task,
    params: TrialParams,
    settings: TrialSettings,
    baseline: Baseline,
    x_train: torch.Tensor,
    example: torch.Tensor,
    *,
    what: str,
) -> Int8Choice | None:
    """The int8 format of a trial that may store int8 layers (an 8-bit trial, or a mixed plan),
    before fine-tuning (qat trains on its grid): ``settings.int8_format``, where ``auto`` is
    the search's resolution (``settings.int8_auto``, timed by its latency meter) or, for a
    trial run without a search, timed here on the dense model once per machine and cached."""
    if params.bits != 8 and params.plan != "mixed":
        return None
    if settings.int8_format == "auto" and settings.int8_auto is not None:
        return resolved_choice(settings.int8_auto)
    return choose_int8_format(
        settings.int8_format,
        task_name=task.name,
        dense=load_baseline_model(task, baseline),
        example=example,
        calibration=calibration(x_train, settings),
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
        calibration=calibration(x_train, settings),
    )


def layer_grid(setting: LayerSetting, int8: Int8Choice | None) -> WeightGrid | None:
    """The weight grid of a layer in the exported artifact (and of qat's fake quantization):
    the int8 format's for int8, ``INT4_GRID`` for int4, the default grid of a simulated width;
    None for fp32 and fp16."""
    if setting.format == "int8":
        return (int8.fmt if int8 is not None else DEFAULT_INT8_FORMAT).grid
    if setting.format == "int4":
        return INT4_GRID
    return weight_grid(setting.bits) if setting.bits < 8 else None


def export_artifact(
    model: nn.Module,
    example: torch.Tensor,
    onnx_path: Path,
    params: TrialParams,
    plan: CompressionPlan,
    int8: Int8Choice | None,
    inputs: np.ndarray,
    *,
    what: str,
) -> dict[str, str]:
    """Write the artifact ``plan`` says and return the tags that say what it is: ``artifact``
    (real or simulated), ``format``, ``quantization``, ``quant_scheme`` (qat, ptq; none at 16
    and 32 bits), and what the CPU kernel computes in where that is not the format. ``inputs``
    calibrate int8 activations."""
    bits = plan.uniform_bits
    if bits is None:
        return export_mixed(
            model,
            example,
            onnx_path,
            plan,
            int8.fmt if int8 is not None else DEFAULT_INT8_FORMAT,
            inputs,
            scheme=params.quant_scheme,
            what=what,
        )
    scheme = params.quant_scheme if bits <= 8 else "none"
    if bits in (32, *SIMULATED_BITS):
        export_onnx(model, example, onnx_path, what=what)
        if bits == 32:
            return {
                "artifact": "real",
                "format": "fp32",
                "quantization": "none",
                "quant_scheme": scheme,
            }
        return {
            "artifact": "simulated",
            "format": f"fp32-baked-{bits}bit",
            "quantization": "fake-quant-baked",
            "quant_scheme": scheme,
        }
    fp32_path = onnx_path.with_name(onnx_path.stem + ".fp32.onnx")
    try:
        export_onnx(model, example, fp32_path, what=what)
        if bits == 8:
            fmt = int8.fmt if int8 is not None else DEFAULT_INT8_FORMAT
            quantize_int8(fp32_path, onnx_path, inputs, what=what, fmt=fmt)
            return {
                "artifact": "real",
                "format": fmt.tag,
                "quantization": "static-qdq",
                "quant_scheme": scheme,
                **(int8.tags() if int8 is not None else {"int8_format": fmt.name}),
            }
        if bits == 4:
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


def calibration(x_train: torch.Tensor, settings: TrialSettings) -> np.ndarray:
    """The calibration inputs of ``settings.seed``: ``settings.calibration_samples`` training
    inputs drawn without replacement."""
    generator = torch.Generator().manual_seed(settings.seed)
    count = min(settings.calibration_samples, len(x_train))
    idx = torch.randperm(len(x_train), generator=generator)[:count]
    return x_train[idx].numpy()
