"""Every weight tensor of an ONNX artifact, at the precision it is stored in: the one universe
that the export check's coverage rule, the precision shares and ``sparsity_achieved`` count.

A weight is an initializer of at least 2 dimensions that reaches, through DequantizeLinear,
Cast, Identity, Transpose, Reshape, Squeeze or Unsqueeze, the weight input of a Conv,
ConvTranspose, Gemm, MatMul (either side), Einsum (any operand), MatMulNBits, Gather or
GatherBlockQuantized (its table: an embedding), GRU, LSTM or RNN (W and R, not the bias), or a
quantized form of these.
Biases, scales, zero points, LayerNorm parameters and shape constants are not weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trials._quantize_int4 import unpack_matmulnbits

# Op type -> indices of its inputs that are weights.
_WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1,),
    "ConvTranspose": (1,),
    "Gemm": (0, 1),
    "MatMul": (0, 1),
    "MatMulInteger": (0, 1),
    "ConvInteger": (1,),
    "Gather": (0,),
    "GatherBlockQuantized": (0,),
    "GRU": (1, 2),
    "LSTM": (1, 2),
    "RNN": (1, 2),
    "QLinearConv": (3,),
    "QLinearMatMul": (0, 3),
    "DynamicQuantizeLSTM": (1, 2),
}
_PASS_THROUGH = {"DequantizeLinear", "Cast", "Identity", "Transpose", "Reshape", "Squeeze"}
_PASS_THROUGH |= {"Unsqueeze"}
_PRECISION: dict[int, str] = {
    TensorProto.FLOAT: "fp32",
    TensorProto.DOUBLE: "fp64",
    TensorProto.FLOAT16: "fp16",
    TensorProto.BFLOAT16: "bf16",
    TensorProto.INT8: "int8",
    TensorProto.UINT8: "int8",
    TensorProto.INT4: "int4",
    TensorProto.UINT4: "int4",
}
FLOAT_PRECISIONS = ("fp32", "fp64", "fp16", "bf16")


@dataclass(frozen=True)
class ArtifactWeight:
    """One weight tensor as stored: its initializer ``name``, the op that uses it, its
    ``precision`` (fp32, fp16, int8, int4, ...), its stored bytes, and its values as the model
    computes with them up to scale (zero exactly where the dequantized weight is zero)."""

    name: str
    op: str
    precision: str
    nbytes: int
    values: np.ndarray

    @property
    def zeros(self) -> int:
        return int(self.values.size - np.count_nonzero(self.values))

    def on_grid(self, bits: int) -> bool:
        """Whether the weight lies on a symmetric ``bits``-bit grid per output unit, as a
        simulated width stores it (``trials._quantize.weight_grid``): in every slice along
        axis 0, or in every slice along axis 1 (a Conv's output channel, a Gemm's row; a
        MatMul's column, a ConvTranspose's output channel), each value is an integer multiple
        of the slice's ``max|v| / (2**(bits-1) - 1)``, up to float rounding. Counting levels
        alone is not enough: a slice of few values (a GRU's rows, a kernel) holds few levels
        whatever they are."""
        if self.values.size == 0:
            return True
        qmax = 2 ** (bits - 1) - 1
        values = self.values.astype(np.float64)
        if values.ndim < 2:
            return _units_on_grid(values.reshape(1, -1), qmax)
        by_first = values.reshape(values.shape[0], -1)
        by_second = np.moveaxis(values, 1, 0).reshape(values.shape[1], -1)
        return _units_on_grid(by_first, qmax) or _units_on_grid(by_second, qmax)


def _units_on_grid(units: np.ndarray, qmax: int, tolerance: float = 1e-3) -> bool:
    """Each row of ``units``, divided by its ``max|v| / qmax``, holds integers (within
    ``tolerance`` of one step)."""
    peak = np.abs(units).max(axis=1, keepdims=True)
    steps = np.divide(units * qmax, peak, out=np.zeros_like(units), where=peak > 0)
    return bool(np.all(np.abs(steps - np.rint(steps)) <= tolerance))


@dataclass(frozen=True)
class WeightCensus:
    """The artifact's weights: bytes per precision and the fraction of weights that are 0."""

    weights: tuple[ArtifactWeight, ...]

    @property
    def total_bytes(self) -> int:
        return sum(w.nbytes for w in self.weights)

    def bytes_by_precision(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for w in self.weights:
            out[w.precision] = out.get(w.precision, 0) + w.nbytes
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def share_text(self) -> str:
        """``int8=0.912,fp32=0.088``: each precision's share of the weight bytes."""
        total = self.total_bytes or 1
        return ",".join(f"{p}={b / total:.3f}" for p, b in self.bytes_by_precision().items())

    @property
    def sparsity(self) -> float:
        """Exactly-zero weights over all weights of the artifact."""
        count = sum(w.values.size for w in self.weights)
        return sum(w.zeros for w in self.weights) / count if count else 0.0


def weight_census(model: onnx.ModelProto) -> WeightCensus:
    """Every weight tensor of ``model`` (see the module docstring), each counted once."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    found: dict[str, ArtifactWeight] = {}
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            source = node.input[1] if len(node.input) > 1 else ""
            if source in inits and source not in found:
                found[source] = _nbits(node, inits[source])
            continue
        for index in _weight_inputs(node):
            if index >= len(node.input):
                continue
            resolved = _resolve(node.input[index], inits, producer)
            if resolved is None:
                continue
            tensor, dequantize = resolved
            if len(tensor.dims) < 2 or tensor.name in found:
                continue
            if tensor.data_type not in _PRECISION:
                continue  # an int64 index table, not a weight
            found[tensor.name] = _weight(node.op_type, tensor, dequantize, inits)
    return WeightCensus(weights=tuple(found.values()))


def _weight_inputs(node: onnx.NodeProto) -> Sequence[int]:
    """The indices of ``node``'s inputs that are weights: every operand of an Einsum (a
    contraction with a constant is a layer, e.g. ``torch.einsum("btd,dk->btk", x, w)``)."""
    if node.op_type == "Einsum":
        return range(len(node.input))
    return _WEIGHT_INPUTS.get(node.op_type, ())


def artifact_sparsity(path: Path) -> float:
    """``sparsity_achieved``: exactly-zero weights over every weight of the ONNX file at
    ``path`` (``weight_census``), whatever layer they belong to."""
    return weight_census(onnx.load(str(path))).sparsity


def opted_out(name: str, keep_float: Sequence[str]) -> bool:
    """Whether the weight ``name`` (parameter names joined by ``+``, maybe with a quantizer's
    suffix) belongs to a module listed in ``keep_float``: a source equal to the entry or
    starting with ``entry.`` or ``entry_``."""
    sources = name.split("+")
    return any(s == e or s.startswith((f"{e}.", f"{e}_")) for s in sources for e in keep_float)


def _resolve(
    name: str, inits: dict[str, TensorProto], producer: dict[str, onnx.NodeProto]
) -> tuple[TensorProto, onnx.NodeProto | None] | None:
    """The initializer behind ``name`` and the DequantizeLinear on the way, if any."""
    dequantize = None
    for _ in range(8):
        if name in inits:
            return inits[name], dequantize
        node = producer.get(name)
        if node is None or node.op_type not in _PASS_THROUGH or not node.input:
            return None
        if node.op_type == "DequantizeLinear":
            dequantize = node
        name = node.input[0]
    return None


def _weight(
    op: str,
    tensor: TensorProto,
    dequantize: onnx.NodeProto | None,
    inits: dict[str, TensorProto],
) -> ArtifactWeight:
    values = numpy_helper.to_array(tensor)
    precision = _PRECISION[tensor.data_type]
    if precision in ("int8", "int4"):
        values = values.astype(np.int32) - _zero_point(values.shape, dequantize, inits)
    nbytes = len(tensor.raw_data) if tensor.raw_data else _packed_bytes(tensor)
    return ArtifactWeight(tensor.name, op, precision, nbytes, values)


def _zero_point(
    shape: tuple[int, ...], dequantize: onnx.NodeProto | None, inits: dict[str, TensorProto]
) -> np.ndarray | int:
    """The zero point of a quantized weight, broadcastable to it (0 when symmetric)."""
    if dequantize is None or len(dequantize.input) < 3 or dequantize.input[2] not in inits:
        return 0
    zero = numpy_helper.to_array(inits[dequantize.input[2]]).astype(np.int32)
    if zero.size <= 1:
        return int(zero.reshape(-1)[0]) if zero.size else 0
    attrs = {a.name: helper.get_attribute_value(a) for a in dequantize.attribute}
    axis = int(attrs.get("axis", 1)) % len(shape)
    view = [1] * len(shape)
    view[axis] = zero.size
    return zero.reshape(view)


def _packed_bytes(tensor: TensorProto) -> int:
    count = int(np.prod(tensor.dims))
    if tensor.data_type in (TensorProto.INT4, TensorProto.UINT4):
        return (count + 1) // 2
    return count * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize


def _nbits(node: onnx.NodeProto, packed: TensorProto) -> ArtifactWeight:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    k, bits = int(attrs["K"]), int(attrs.get("bits", 4))
    raw = numpy_helper.to_array(packed)
    nbytes = len(packed.raw_data) if packed.raw_data else raw.size
    if bits != 4:
        return ArtifactWeight(packed.name, "MatMulNBits", f"int{bits}", nbytes, raw)
    return ArtifactWeight(packed.name, "MatMulNBits", "int4", nbytes, unpack_matmulnbits(raw, k))
