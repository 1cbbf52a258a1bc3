"""Export to one self-contained ONNX file; static int8 QDQ quantization in ONNX Runtime (in one of
the ``Int8Format``s); fp16. The int4 export is ``trials._quantize_int4``."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import Tensor, nn

from trials._artifact_clean import (
    fixed_width_tensors,
    restore_weight_names,
    strip_debug_metadata,
)
from trials._errors import ExportError, QuantizationError
from trials._export_registry import registry_reused
from trials._ort_log import rank1_axis_warnings_dropped
from trials._quantize import DEFAULT_INT8_FORMAT, Int8Format
from trials._quantize_int4 import Int4Export, rewrite_int4
from trials._tables import quantize_tables

INPUT_NAME = "input"
OUTPUT_NAME = "logits"

# The default int8 format's tag (uint8 activations, int8 per-channel symmetric weights); which
# format a trial uses is chosen per machine (trials._quantize_auto) or set in the config.
INT8_FORMAT = DEFAULT_INT8_FORMAT.tag


def export_onnx(model: nn.Module, example: Tensor, path: Path, *, what: str) -> None:
    """Write ``model`` to ``path`` as one self-contained ONNX file (weights inside, no side
    ``.onnx.data`` file) with a dynamic batch dimension.

    Uses the dynamo exporter (``torch.export``), the supported path in torch 2.x, with its
    operator registry built once per process (``trials._export_registry``). Its batch
    dimension is only dynamic when the example batch has at least 2 samples (a size-1 dimension is
    specialised), so the example is repeated to batch 2.
    """
    model.eval()
    batch = example if example.shape[0] >= 2 else torch.cat([example, example])
    try:
        with registry_reused():
            torch.onnx.export(
                model,
                (batch,),
                str(path),
                dynamo=True,
                external_data=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
                verbose=False,
            )
        exported = onnx.load(str(path))
        names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
        if restore_weight_names(exported, names):
            onnx.save_model(exported, str(path))
    except Exception as exc:
        raise ExportError(
            f"{what}: the model must export to ONNX with torch.onnx.export(dynamo=True), but it "
            f"failed with {type(exc).__name__}: {_first_line(exc)}. Fix: make forward() "
            "traceable by torch.export (no float(tensor), no data-dependent Python control "
            "flow); see the chained exception."
        ) from exc
    _finish_artifact(path, what=what)


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    calibration: np.ndarray,
    *,
    what: str,
    fmt: Int8Format = DEFAULT_INT8_FORMAT,
    only_weights: Collection[str] | None = None,
) -> None:
    """Static QDQ int8 quantization of an fp32 ONNX file in format ``fmt`` (activation type,
    per-channel or per-tensor symmetric weights, reduce_range), activations calibrated (min-max)
    on the given inputs. The weights land on ``fmt.grid``, the grid qat fine-tunes on. Raises if
    the result has no QuantizeLinear/DequantizeLinear nodes. With ``only_weights`` (initializer
    names, a per-layer plan's int8 layers) only the nodes reading those weights are quantized;
    the others stay float."""
    pre_path = out_path.with_name(out_path.stem + ".pre.onnx")
    try:
        quant_pre_process(str(fp32_path), str(pre_path))
        with rank1_axis_warnings_dropped():  # LayerNorm weights: per-tensor, as they must be
            quantize_static(
                str(pre_path),
                str(out_path),
                _Calibration(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=fmt.per_channel,
                reduce_range=fmt.reduce_range,
                activation_type=fmt.activation_type,
                weight_type=QuantType.QInt8,
                extra_options={"WeightSymmetric": True},
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=float_tables(pre_path),
                nodes_to_quantize=(
                    None if only_weights is None else nodes_reading(pre_path, only_weights)
                ),
            )
    except Exception as exc:
        raise QuantizationError(
            f"{what}: static int8 quantization in ONNX Runtime ({fmt.name}) must succeed for "
            f"bits=8, but it failed with {type(exc).__name__}: {_first_line(exc)}. Fix: search "
            "bits=32 or bits<8 for this model; see the chained exception."
        ) from exc
    finally:
        pre_path.unlink(missing_ok=True)
    if only_weights is None:  # a mixed plan's tables stay as exported
        quantize_tables(out_path, 8, what=what)  # int8 rows, per row (trials._tables)
    ops = set(onnx_op_types(out_path))
    missing = {"QuantizeLinear", "DequantizeLinear"} - ops
    if missing:
        raise QuantizationError(
            f"{what}: an int8 artifact must contain QuantizeLinear and DequantizeLinear nodes, "
            f"but {out_path} lacks {sorted(missing)} (ops: {sorted(ops)}). Fix: the model has "
            "no Conv/Gemm/MatMul that ONNX Runtime quantizes; search bits=32 for it."
        )
    _finish_artifact(out_path, what=what)


def float_tables(path: Path) -> list[str]:
    """Names of the nodes ``quantize_static`` must leave alone: a Gather that looks up a
    constant table (``nn.Embedding``) and any other non-layer op with a constant matrix input (a
    positional embedding added to the activations). ONNX Runtime's static quantizer would give
    such a table one per-tensor scale even in a per-channel format; the tables are stored per
    row by ``trials._tables.quantize_tables`` instead, and the other constants stay fp32."""
    model = onnx.load(str(path), load_external_data=False)
    tables = {t.name for t in model.graph.initializer if len(t.dims) >= 2}
    layers = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
    return [
        n.name
        for n in model.graph.node
        if n.op_type not in layers and any(name in tables for name in n.input)
    ]


def nodes_reading(path: Path, weights: Collection[str]) -> list[str]:
    """Names of the Conv/Gemm/MatMul nodes of the ONNX file at ``path`` whose weight input is
    one of the initializers ``weights``."""
    model = onnx.load(str(path), load_external_data=False)
    wanted = set(weights)
    return [
        n.name
        for n in model.graph.node
        if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in wanted
    ]


def quantize_int4(
    fp32_path: Path,
    out_path: Path,
    *,
    what: str,
    matmulnbits: bool = True,
    only_weights: Collection[str] | None = None,
) -> Int4Export:
    """The real int4 artifact of an fp32 ONNX file (``trials._quantize_int4``: MatMulNBits for
    Linear, int4 DequantizeLinear for Conv, weights on ``INT4_GRID``; embedding tables in
    GatherBlockQuantized, ``trials._tables``), one self-contained file. With ``only_weights``
    (a mixed plan) only the layers reading those initializers; tables then stay as exported."""
    summary = rewrite_int4(
        fp32_path, out_path, what=what, matmulnbits=matmulnbits, only_weights=only_weights
    )
    if only_weights is None:
        quantize_tables(out_path, 4, what=what)  # GatherBlockQuantized (trials._tables)
    _finish_artifact(out_path, what=what)
    return summary


FP16_FORMAT = "fp16"


def cast_weights_fp16(path: Path, out_path: Path, weights: Collection[str], *, what: str) -> int:
    """A mixed plan's fp16 layers: each initializer of ``weights`` (a Conv/Gemm/MatMul node's
    weight input) stored as float16 under its own name, and read through a ``Cast`` to float32
    (ONNX Runtime's CPU provider computes in fp32: the file shrinks, the layer does not get
    faster). Biases stay fp32. Returns how many weights were cast."""
    model = onnx.load(str(path))
    wanted = set(weights)
    inits = {t.name: t for t in model.graph.initializer if t.name in wanted}
    readers = [
        n
        for n in model.graph.node
        if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in inits
    ]
    missing = wanted - {n.input[1] for n in readers}
    if missing:
        raise QuantizationError(
            f"{what}: a layer the plan stores as fp16 must be read by a Conv, Gemm or MatMul "
            f"node, but {sorted(missing)[:3]} are not. Fix: report this as a slimtune bug."
        )
    casts = []
    for name, tensor in inits.items():
        tensor.CopyFrom(
            numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), name)
        )
        cast = f"{name}_fp32"
        casts.append(helper.make_node("Cast", [name], [cast], to=onnx.TensorProto.FLOAT))
        for node in readers:
            if node.input[1] == name:
                node.input[1] = cast
    for node in reversed(casts):
        model.graph.node.insert(0, node)
    stale = [v for v in model.graph.value_info if v.name in inits]  # typed float before
    for info in stale:
        model.graph.value_info.remove(info)
    onnx.save_model(model, str(out_path))
    _finish_artifact(out_path, what=what)
    return len(casts)


def convert_fp16(fp32_path: Path, out_path: Path, *, what: str) -> int:
    """Write an fp16 copy of an fp32 ONNX file: every float initializer and computation in
    float16 (``onnxconverter_common.float16``), with fp32 inputs and outputs kept through Cast
    nodes (``keep_io_types``) so callers feed and read fp32 as before.

    ONNX Runtime's CPU provider has few fp16 kernels: it inserts Casts and computes in fp32, so
    the file halves but latency does not drop on CPU (it does on GPUs).

    The model's own Casts to float32 (a ``.float()`` in forward) are made Casts to float16, so
    that the fp16 computation after them gets fp16 (ONNX Runtime refuses the file otherwise);
    returns how many were converted."""
    from onnxconverter_common import float16

    try:
        model = onnx.load(str(fp32_path))
        casts = _model_float_casts(model)
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
        retargeted = _retarget_casts(converted, casts)
        onnx.save_model(converted, str(out_path))
    except Exception as exc:
        raise QuantizationError(
            f"{what}: converting the fp32 ONNX file to fp16 must succeed for bits=16, but it "
            f"failed with {type(exc).__name__}: {_first_line(exc)}. Fix: search bits=32 or "
            "bits=8 for this model; see the chained exception."
        ) from exc
    _finish_artifact(out_path, what=what)
    return retargeted


def _model_float_casts(model: onnx.ModelProto) -> set[str]:
    """Names of the model's own Cast nodes to float32 (a ``.float()`` in forward), whose
    output is not a graph output."""
    outputs = {o.name for o in model.graph.output}
    return {
        node.name
        for node in model.graph.node
        if node.op_type == "Cast"
        and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in node.attribute)
        and not outputs & set(node.output)
    }


def _retarget_casts(model: onnx.ModelProto, names: set[str]) -> int:
    """Make the model's own Casts to float32 (``names``) cast to float16 in the converted model,
    in place: the converter leaves their target type at float32, so the fp16 op after one gets
    a float32 input and ONNX Runtime refuses the file. Returns how many were changed."""
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Cast" or node.name not in names:
            continue
        for attr in node.attribute:
            if attr.name == "to" and attr.i == onnx.TensorProto.FLOAT:
                attr.i = onnx.TensorProto.FLOAT16
                changed += 1
    retyped = {out for node in model.graph.node if node.name in names for out in node.output}
    for value in model.graph.value_info:
        if value.name in retyped and value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    return changed


def onnx_op_types(path: Path) -> list[str]:
    """Sorted distinct op types of the main graph; ops outside the default domain are prefixed
    with their domain (``com.microsoft.QLinearConv``)."""
    model = onnx.load(str(path), load_external_data=False)
    return sorted(
        {
            node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            for node in model.graph.node
        }
    )


def onnx_opset(path: Path) -> int:
    """The default-domain opset version of an ONNX file."""
    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


class _Calibration(CalibrationDataReader):
    """Feeds calibration inputs to ONNX Runtime's calibrator in batches."""

    def __init__(self, inputs: np.ndarray, batch_size: int = 64) -> None:
        self._batches: Iterator[np.ndarray] = iter(
            [inputs[i : i + batch_size] for i in range(0, len(inputs), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def _finish_artifact(path: Path, *, what: str) -> None:
    """The last step of every export, whatever the format: strip the exporter's debug metadata
    (``strip_debug_metadata``), so that the file measured is the file a user would ship, store
    integer tensors at a fixed width (``fixed_width_tensors``), so that its size depends on its
    structure only, and check that it is one self-contained file."""
    model = onnx.load(str(path), load_external_data=False)
    stripped = strip_debug_metadata(model).changed
    if fixed_width_tensors(model) or stripped:
        onnx.save_model(model, str(path))
    external = [
        t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    if external:
        raise ExportError(
            f"{what}: the ONNX artifact must be one self-contained file, but {path} keeps "
            f"{len(external)} tensors in external data (e.g. {external[0]!r}). "
            "Fix: export with external_data=False (models over 2 GB cannot be one file)."
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"
