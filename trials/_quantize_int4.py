"""Real int4 ONNX artifacts: every Conv/Linear weight stored as symmetric int4 on
``INT4_GRID`` (``[-7, 7]`` per output channel, the grid fake quantization trains on).

- Linear (a Gemm, or a MatMul with a constant 2-D weight) becomes ``com.microsoft.MatMulNBits``
  (``bits=4``, no zero points: the implicit zero point 8 makes the stored codes ``q + 8``; every
  block of a row carries the row's scale; the bias is its optional input; ``accuracy_level=4``
  lets ONNX Runtime's CPU kernel quantize activations to int8 per block).
- Conv (and a Gemm MatMulNBits cannot express) keeps its op and reads its weight from an INT4
  initializer through ``DequantizeLinear(axis=0)``; the model is converted to opset 21, the
  first opset with int4 tensors in the default domain.

Weights are rounded to the grid (a no-op for weights already on it, as after fake-quant
fine-tuning or ``round_to_grid``). Activations stay float: it is a weight-only format.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

from trials._errors import QuantizationError
from trials._quantize import INT4_GRID

INT4_OPSET = 21
_MS_DOMAIN = "com.microsoft"
_ACCURACY_LEVEL = 4  # int8 activations in MatMulNBits where the CPU kernel supports it
_ZERO_CODE = 8  # MatMulNBits' implicit zero point for 4 bits


@dataclass(frozen=True)
class Int4Export:
    """What ``rewrite_int4`` wrote: layers as MatMulNBits and as int4 DequantizeLinear."""

    matmulnbits: int
    dequantize: int

    @property
    def layers(self) -> int:
        return self.matmulnbits + self.dequantize


def rewrite_int4(
    fp32_path: Path,
    out_path: Path,
    *,
    what: str,
    matmulnbits: bool = True,
    only_weights: Collection[str] | None = None,
) -> Int4Export:
    """Write ``out_path``: the fp32 ONNX file at ``fp32_path`` with every constant Conv, Gemm
    and MatMul weight stored as int4 (see the module docstring; ``matmulnbits=False`` puts the
    Linear layers behind int4 DequantizeLinear too, for comparison; ``only_weights``: only the
    layers reading those initializers, the others left as they are). Raises
    ``QuantizationError`` if the model has no such layer or the rewrite fails."""
    try:
        model = version_converter.convert_version(onnx.load(str(fp32_path)), INT4_OPSET)
        summary = _rewrite(model.graph, matmulnbits=matmulnbits, only=only_weights)
        if summary.matmulnbits and not any(o.domain == _MS_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(_MS_DOMAIN, 1))
        onnx.checker.check_model(model)
        onnx.save_model(model, str(out_path))
    except QuantizationError:
        raise
    except Exception as exc:
        raise QuantizationError(
            f"{what}: the int4 export (MatMulNBits for Linear, int4 DequantizeLinear for Conv, "
            f"opset {INT4_OPSET}) must succeed for bits=4, but it failed with "
            f"{type(exc).__name__}: {str(exc).strip()[:300]}. Fix: search bits=8 or 32 for this "
            "model; see the chained exception."
        ) from exc
    if summary.layers == 0:
        raise QuantizationError(
            f"{what}: an int4 artifact needs Conv/Gemm/MatMul layers with constant weights, but "
            f"{fp32_path.name} has none. Fix: search bits=8 or 32 for this model."
        )
    return summary


def int4_codes(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(q, scale)`` of a weight whose output units are on axis 0: ``q`` int8 in ``[-7, 7]``
    shaped like ``weight``, ``scale`` float32 per unit (``max|w| / 7``; 1 for an all-zero unit)."""
    flat = weight.reshape(weight.shape[0], -1).astype(np.float32)
    scale = np.abs(flat).max(axis=1) / INT4_GRID.qmax
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(flat / scale[:, None]), -INT4_GRID.qmax, INT4_GRID.qmax)
    return q.astype(np.int8).reshape(weight.shape), scale


def unpack_matmulnbits(packed: np.ndarray, k: int) -> np.ndarray:
    """The signed codes ``[N, K]`` of a 4-bit MatMulNBits weight ``[N, blocks, block/2]`` with
    the implicit zero point 8 (the inverse of the packing ``rewrite_int4`` writes)."""
    low = packed & 0x0F
    high = packed >> 4
    codes = np.stack([low, high], axis=-1).reshape(packed.shape[0], -1)
    return codes[:, :k].astype(np.int8) - _ZERO_CODE


_LAYERS = ("Conv", "Gemm", "MatMul")


def _rewrite(
    graph: onnx.GraphProto, *, matmulnbits: bool, only: Collection[str] | None = None
) -> Int4Export:
    inits = {t.name: t for t in graph.initializer}
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    shared = _shared_weights(graph.node, inits, users, only)
    nodes: list[onnx.NodeProto] = []
    nbits = dq = 0
    for node in graph.node:
        weight = node.input[1] if len(node.input) > 1 else ""
        chosen = only is None or weight in only
        if node.op_type not in _LAYERS or (weight not in shared and weight not in inits):
            nodes.append(node)
            continue
        if weight in shared:  # one int4 copy, dequantized once, read by every user
            if weight in inits:
                new_inits, dq_node = _dequantize(weight, inits[weight], shared[weight])
                graph.initializer.remove(inits.pop(weight))
                graph.initializer.extend(new_inits)
                nodes.append(dq_node)
            node.input[1] = _dequantized(weight)
            nodes.append(node)
            dq += 1
            continue
        if not chosen or users[weight] != 1:  # a weight shared otherwise stays (the check says)
            nodes.append(node)
            continue
        array = numpy_helper.to_array(inits[weight])
        replaced = _as_matmulnbits(node, array, inits) if matmulnbits else None
        if replaced is not None:
            new_node, new_inits, dropped = replaced
            nodes.append(new_node)
            nbits += 1
        elif node.op_type == "MatMul" and array.ndim != 2:
            nodes.append(node)
            continue
        else:
            new_inits, dq_node = _dequantize(weight, inits[weight], _unit_axis(node))
            node.input[1] = _dequantized(weight)
            nodes.extend([dq_node, node])
            dropped = [weight]
            dq += 1
        for name in dropped:
            if users[name] == 1:  # a bias shared with another node stays
                graph.initializer.remove(inits.pop(name))
        graph.initializer.extend(new_inits)
    del graph.node[:]
    graph.node.extend(nodes)
    return Int4Export(matmulnbits=nbits, dequantize=dq)


def _shared_weights(
    nodes: Collection[onnx.NodeProto],
    inits: dict[str, onnx.TensorProto],
    users: dict[str, int],
    only: Collection[str] | None,
) -> dict[str, int]:
    """The weights read by more than one layer (tied weights, or identical ones the exporter
    merged, as the cloned layers of an untrained ``nn.TransformerEncoder``) that can be stored
    once as int4: every use is a chosen Conv, Gemm or 2-D MatMul reading it as its weight along
    the same output axis. By name, that axis."""
    axes: dict[str, set[int]] = {}
    unfit: set[str] = set()
    for node in nodes:
        for slot, name in enumerate(node.input):
            if name not in inits or users.get(name, 0) < 2:
                continue
            ndim = len(inits[name].dims)
            fits = slot == 1 and node.op_type in _LAYERS and (only is None or name in only)
            if not fits or (node.op_type != "Conv" and ndim != 2):
                unfit.add(name)
            else:
                axes.setdefault(name, set()).add(_unit_axis(node))
    return {
        name: min(found) for name, found in axes.items() if len(found) == 1 and name not in unfit
    }


def _unit_axis(node: onnx.NodeProto) -> int:
    """The axis of ``node``'s weight that holds its output units: 0 for Conv and a transposed
    Gemm weight ``[N, K]``, 1 for ``[K, N]`` (a MatMul, or a Gemm without transB)."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 1


def _as_matmulnbits(
    node: onnx.NodeProto, array: np.ndarray, inits: dict[str, onnx.TensorProto]
) -> tuple[onnx.NodeProto, list[onnx.TensorProto], list[str]] | None:
    """A MatMulNBits doing what ``node`` does, or None when it cannot: a Gemm with alpha/beta
    other than 1, transA, or a bias that is not a constant ``[N]`` vector; a non-2-D weight."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    bias: str | None = None
    if node.op_type == "Gemm":
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return None
        if attrs.get("transA", 0):
            return None
        w_nk = array if attrs.get("transB", 0) else array.T
        if len(node.input) > 2 and node.input[2]:
            bias = node.input[2]
            if bias not in inits or numpy_helper.to_array(inits[bias]).size != w_nk.shape[0]:
                return None
    elif node.op_type == "MatMul" and array.ndim == 2:
        w_nk = array.T
    else:
        return None
    n, k = w_nk.shape
    block = _block_size(k)
    blocks = -(-k // block)
    q, scale = int4_codes(w_nk)
    codes = np.full((n, blocks * block), _ZERO_CODE, dtype=np.uint8)
    codes[:, :k] = (q + _ZERO_CODE).astype(np.uint8)
    codes = codes.reshape(n, blocks, block)
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    base = node.input[1]
    packed_t = numpy_helper.from_array(packed, f"{base}_int4")
    scales_t = numpy_helper.from_array(
        np.repeat(scale[:, None], blocks, axis=1).astype(np.float32), f"{base}_int4_scales"
    )
    inputs = [node.input[0], packed_t.name, scales_t.name]
    new_inits = [packed_t, scales_t]
    dropped = [base]
    if bias is not None:
        bias_t = numpy_helper.from_array(
            numpy_helper.to_array(inits[bias]).reshape(n).astype(np.float32), f"{bias}_vector"
        )
        inputs += ["", "", bias_t.name]  # zero_points and g_idx absent, then bias
        new_inits.append(bias_t)
    new_node = helper.make_node(
        "MatMulNBits",
        inputs,
        list(node.output),
        name=f"{node.name}_int4" if node.name else "",
        domain=_MS_DOMAIN,
        K=k,
        N=n,
        bits=4,
        block_size=block,
        accuracy_level=_ACCURACY_LEVEL,
    )
    return new_node, new_inits, dropped + ([bias] if bias is not None else [])


def _dequantized(weight: str) -> str:
    return f"{weight}_dequantized"


def _dequantize(
    weight: str, tensor: onnx.TensorProto, axis: int
) -> tuple[list[onnx.TensorProto], onnx.NodeProto]:
    """An INT4 initializer of ``weight`` (one scale per index of ``axis``, the output units)
    and the DequantizeLinear that gives it back as float, named ``_dequantized(weight)``."""
    array = numpy_helper.to_array(tensor)
    q, scale = int4_codes(np.moveaxis(array, axis, 0))
    q_t = numpy_helper.from_array(np.moveaxis(q, 0, axis).astype(ml_dtypes.int4), f"{weight}_int4")
    scale_t = numpy_helper.from_array(scale, f"{weight}_int4_scale")
    dq = helper.make_node(
        "DequantizeLinear",
        [q_t.name, scale_t.name],
        [_dequantized(weight)],
        name=f"{weight}_DequantizeLinear",
        axis=axis,
    )
    return [q_t, scale_t], dq


def _block_size(k: int) -> int:
    """MatMulNBits block along K: 128 (the scales cost 1/16 of the int4 bytes), or the smallest
    power of two >= K from 16 for a shorter K. Latency measured flat from 16 to 256."""
    block = 16
    while block < min(k, 128):
        block *= 2
    return block
