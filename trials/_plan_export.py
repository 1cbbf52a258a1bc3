"""The artifact of a mixed plan, and the check that it holds each layer's claimed format.

A mixed plan gives each Conv/Linear layer its own format among ``MIXED_FORMATS``: int8 layers
get ONNX Runtime's static QDQ (``quantize_static`` with ``nodes_to_quantize``: only their nodes
and their input activations), fp16 layers store their weight as float16 behind a Cast, int4
layers are rewritten to MatMulNBits (Linear) or an int4 DequantizeLinear (Conv), and fp32
layers stay as exported. ``check_plan_export`` reads the file,
never the PyTorch model: each layer's weight must be stored in its format, every other weight
float, and the file must load and run in ONNX Runtime.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from trials._artifact_weights import ArtifactWeight, weight_census
from trials._errors import ExportClaimError
from trials._export import cast_weights_fp16, export_onnx, quantize_int4, quantize_int8
from trials._export_check import (
    ExportClaim,
    _check_int8_format,
    _check_loads,
    check_export,
)
from trials._layer_weights import layer_weights
from trials._plan import MIXED_FORMATS, CompressionPlan
from trials._quantize import INT4_COMPUTE, INT4_GRID, Int8Format

# The precision the weight census reads for each per-layer format.
_PRECISION = {"fp32": "fp32", "fp16": "fp16", "int8": "int8", "int4": "int4"}


def weight_name(layer: str) -> str:
    """The initializer name of a layer's weight in the exported file (``trials._export`` keeps
    parameter names)."""
    return f"{layer}.weight"


def weight_names(layers: Sequence[str]) -> tuple[str, ...]:
    """The initializer names of the weights of the layers named ``layers``."""
    return tuple(weight_name(n) for n in layers)


def export_mixed(
    model: nn.Module,
    example: torch.Tensor,
    onnx_path: Path,
    plan: CompressionPlan,
    fmt: Int8Format,
    inputs: np.ndarray,
    *,
    scheme: str,
    what: str,
) -> dict[str, str]:
    """Write the mixed artifact of ``plan`` (int8 layers in ``fmt``, activations calibrated on
    ``inputs``) and return its tags."""
    odd = sorted({f for f in plan.formats() if f not in MIXED_FORMATS})
    if odd:
        raise ExportClaimError(
            f"{what}: a mixed plan stores each layer in one of {list(MIXED_FORMATS)}, but it "
            f"asks for {odd}. Fix: report this as a slimtune bug (the allocator chose them)."
        )
    int8 = [weight_name(n) for n in plan.layers_in("int8")]
    int4 = [weight_name(n) for n in plan.layers_in("int4")]
    fp16 = [weight_name(n) for n in plan.layers_in("fp16")]
    fp32_path = onnx_path.with_name(onnx_path.stem + ".fp32.onnx")
    q8_path = onnx_path.with_name(onnx_path.stem + ".int8.onnx")
    half_path = onnx_path.with_name(onnx_path.stem + ".fp16.onnx")
    tags = {
        "artifact": "real",
        "format": "mixed",
        "quantization": "per-layer",
        "quant_scheme": scheme,
    }
    try:
        export_onnx(model, example, fp32_path, what=what)
        current = fp32_path
        if int8:
            quantize_int8(current, q8_path, inputs, what=what, fmt=fmt, only_weights=int8)
            current = q8_path
            tags["int8_format"] = fmt.name
        if fp16:
            cast_weights_fp16(current, half_path, fp16, what=what)
            current = half_path
            tags["fp16_compute"] = "ONNX Runtime's CPU provider casts the fp16 weights to fp32"
        if int4:
            written = quantize_int4(current, onnx_path, what=what, only_weights=int4)
            tags["int4_layers"] = (
                f"matmulnbits={written.matmulnbits},dequantize={written.dequantize}"
            )
            tags["int4_compute"] = INT4_COMPUTE
        else:
            shutil.copyfile(current, onnx_path)
    finally:
        for scratch in (fp32_path, q8_path, half_path):
            scratch.unlink(missing_ok=True)
    return tags


def _belongs(weight: str, layer: str) -> bool:
    """Whether the artifact weight ``weight`` (maybe with a quantizer's suffix) is ``layer``'s."""
    base = weight_name(layer)
    return any(s == base or s.startswith(f"{base}_") for s in weight.split("+"))


def check_plan_export(
    path: Path,
    plan: CompressionPlan,
    *,
    int8_format: str | None,
    what: str,
    example: np.ndarray | None = None,
    units: int | None = None,
    dense_widths: Mapping[str, int] | None = None,
) -> dict[str, str]:
    """Check that the artifact at ``path`` stores each layer of ``plan`` in its format: an int8
    weight behind a DequantizeLinear (in ``int8_format``, checked as a uniform int8 artifact
    is), an int4 one in a MatMulNBits or INT4 initializer on ``[-7, 7]``, an fp32 one as a float
    initializer; every weight outside the plan float; with ``units`` (structured pruning
    claimed), the Conv/Linear layers have that many output units in all; with ``dense_widths``
    (layer -> dense output units), each plan layer has ``round(keep x dense)`` output units in
    the file (per-layer kept widths). Returns the tags
    ``export_check=ok``, ``export_check_summary`` (each layer's stored precision) and
    ``weight_bytes_share``.
    Raises ``ExportClaimError`` on a mismatch."""
    model = onnx.load(str(path))
    census = weight_census(model)
    seen: dict[str, str] = {}

    def fail(rule: str, fix: str) -> ExportClaimError:
        stored = ",".join(f"{n}={p}" for n, p in seen.items())
        return ExportClaimError(
            f"{what}: the artifact must show the per-layer plan it claims: {rule}, but "
            f"{path.name} stores {stored or 'no plan layer'} (plan {plan.histogram()}). "
            f"Fix: {fix}"
        )

    bug = "report this as a slimtune bug; the trial's numbers are not trustworthy"
    owned: set[str] = set()
    for layer, setting in plan.layers:
        found = [w for w in census.weights if _belongs(w.name, layer)]
        seen[layer] = "+".join(w.precision for w in found) or "missing"
        if len(found) != 1:
            raise fail(f"layer {layer!r} has one weight in the file ({len(found)} found)", bug)
        weight = found[0]
        owned.add(weight.name)
        want = _PRECISION.get(setting.format)
        if want is None or weight.precision != want:
            raise fail(f"layer {layer!r} is stored as {setting.format}", bug)
        _check_grid(layer, setting.format, weight, fail)
    strays = [
        w
        for w in census.weights
        if w.name not in owned and w.precision not in ("fp32", "fp64", "fp16")
    ]
    if strays:
        raise fail(
            f"weights outside the plan stay float ({strays[0].name} is {strays[0].precision})",
            bug,
        )
    inits = {t.name: t for t in model.graph.initializer}
    if plan.layers_in("int8") and int8_format is not None:
        _check_int8_format(model.graph, inits, int8_format, fail)
    if dense_widths is not None:
        wrong = kept_units_error(model, plan, dense_widths)
        if wrong:
            raise fail(wrong, bug)
    if units is not None:
        weights, unresolved = layer_weights(model.graph, inits)
        seen_units = sum(w.array.shape[0] for w in weights)
        if unresolved or seen_units != units:
            raise fail(
                f"structured pruning is claimed: {units} output units "
                f"(the file has {seen_units}, {unresolved} weights computed in the graph)",
                bug,
            )
    _check_loads(path, example, what=what)
    return {
        "export_check": "ok",
        "export_check_summary": "plan " + ",".join(f"{n}={p}" for n, p in seen.items())[:4000],
        "weight_bytes_share": census.share_text(),
    }


def kept_units_error(
    model: onnx.ModelProto, plan: CompressionPlan, dense_widths: Mapping[str, int]
) -> str:
    """Empty when each plan layer's weight in ``model`` has ``round(keep x dense)`` output units
    (``dense_widths``: layer -> dense output units); else the rule broken, with the values."""
    inits = {t.name: t for t in model.graph.initializer}
    weights, _ = layer_weights(model.graph, inits)
    for layer, setting in plan.layers:
        claim = round(setting.keep * dense_widths[layer])
        held = [w.array.shape[0] for w in weights if w.name and _belongs(w.name, layer)]
        if held != [claim]:
            return (
                f"layer {layer!r} keeps {setting.keep:g} of its {dense_widths[layer]} output "
                f"units: {claim} (the file has {held or 'no such weight'})"
            )
    return ""


def _check_grid(
    layer: str, fmt: str, weight: ArtifactWeight, fail: Callable[[str, str], ExportClaimError]
) -> None:
    """An int4 weight's codes lie on ``INT4_GRID``; an int8 weight's within ``[-127, 127]``."""
    limit = {"int4": INT4_GRID.qmax, "int8": 127}.get(fmt)
    if limit is None or weight.values.size == 0:
        return
    peak = int(np.abs(weight.values.astype(np.int64)).max())
    if peak > limit:
        raise fail(
            f"layer {layer!r} ({fmt}) holds codes within [-{limit}, {limit}] (seen |q|={peak})",
            "report this as a slimtune bug; the trial's numbers are not trustworthy",
        )


def check_artifact(
    path: Path,
    plan: CompressionPlan,
    *,
    units: int,
    dense_units: int,
    structured: bool,
    int8_format: str | None,
    keep_float: tuple[str, ...],
    what: str,
    example: np.ndarray | None,
    dense_widths: Mapping[str, int] | None = None,
    rounded: tuple[str, ...] = (),
) -> dict[str, str]:
    """The export check of a trial's artifact: a uniform plan's claim is the bit-width's
    (``check_export``); a mixed plan's is checked layer by layer (``check_plan_export``), also
    when it gives every layer one format (it is exported as a mixed plan: tables float).
    ``rounded``: the weights the trial put on a simulated width's grid (``ExportClaim``)."""
    bits = plan.uniform_bits
    if bits is not None:
        claim = ExportClaim(
            bits=bits,
            units=units,
            dense_units=dense_units,
            structured=structured,
            int8_format=int8_format,
            keep_float=keep_float,
            rounded=rounded,
        )
        return check_export(path, claim, what=what, example=example)
    return check_plan_export(
        path,
        plan,
        int8_format=int8_format,
        what=what,
        example=example,
        units=units if structured else None,
        dense_widths=dense_widths if structured else None,
    )
