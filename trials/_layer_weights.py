"""The Conv/Gemm/MatMul layers of an ONNX graph as the export checks read them: each layer's
weight with its output units on axis 0 (the stored integers for an int4/int8 weight), found
through the ops a weight passes on its way from its initializer (DequantizeLinear, Cast,
Identity), and MatMulNBits' packed int4 codes unpacked."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trials._quantize_int4 import unpack_matmulnbits

INT4_TYPES = (TensorProto.INT4, TensorProto.UINT4)
NBITS = "MatMulNBits"
# Ops a weight may pass through between its initializer and the Conv/Gemm/MatMul using it.
_PASS_THROUGH = {"DequantizeLinear", "Cast", "Identity"}


@dataclass(frozen=True)
class LayerWeight:
    """A layer's weight as stored: the op reading it, the array, its stored type, its name."""

    op: str
    array: np.ndarray  # output units on axis 0; the stored integers for int4/int8 weights
    stored: int  # TensorProto data type of the stored weight (INT4 for MatMulNBits)
    name: str = ""  # the stored initializer's name


def producer_of(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """The node producing each tensor of ``graph``."""
    return {out: node for node in graph.node for out in node.output}


def layer_weights(
    graph: onnx.GraphProto, inits: dict[str, TensorProto]
) -> tuple[list[LayerWeight], int]:
    """The weight of each Conv/Gemm/MatMul-with-constant-weight and MatMulNBits node, output
    units on axis 0 (stored integers for int weights); and how many such nodes have a weight the
    graph computes (not readable here)."""
    producer = {out: node for node in graph.node for out in node.output}
    weights: list[LayerWeight] = []
    unresolved = 0
    for node in graph.node:
        if node.op_type == NBITS:
            weights.append(nbits_weight(node, inits))
            continue
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        tensor = constant(node.input[1], inits, producer)
        if tensor is None:
            # A MatMul between two activations is no layer; a Conv/Gemm weight should resolve.
            unresolved += node.op_type != "MatMul"
            continue
        array = numpy_helper.to_array(tensor)
        if tensor.data_type in INT4_TYPES:
            array = array.astype(np.int8)
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            array = array if trans_b else array.T
        elif node.op_type == "MatMul":
            if array.ndim != 2:
                continue
            array = array.T
        weights.append(LayerWeight(node.op_type, array, tensor.data_type, tensor.name))
    return weights, unresolved


def nbits_weight(node: onnx.NodeProto, inits: dict[str, TensorProto]) -> LayerWeight:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    n, k, bits = int(attrs["N"]), int(attrs["K"]), int(attrs.get("bits", 4))
    if bits != 4 or node.input[1] not in inits:
        return LayerWeight(NBITS, np.zeros((n, 0), dtype=np.int8), TensorProto.UINT8)
    codes = unpack_matmulnbits(numpy_helper.to_array(inits[node.input[1]]), k)
    return LayerWeight(NBITS, codes, TensorProto.INT4, node.input[1])


def asymmetric_int4(node: onnx.NodeProto, inits: dict[str, TensorProto]) -> bool:
    """A DequantizeLinear of an INT4/UINT4 initializer with a zero point that is not all 0."""
    source, zero = node.input[0], input_name(node, 2)
    if source not in inits or inits[source].data_type not in INT4_TYPES:
        return False
    if inits[source].data_type == TensorProto.UINT4:
        return True
    if not zero:
        return False
    return zero not in inits or bool(numpy_helper.to_array(inits[zero]).astype(np.int8).any())


def input_name(node: onnx.NodeProto, index: int) -> str:
    """The name of input ``index`` of ``node``, or "" when it is absent."""
    return node.input[index] if len(node.input) > index else ""


def constant(
    name: str, inits: dict[str, TensorProto], producer: dict[str, onnx.NodeProto]
) -> TensorProto | None:
    for _ in range(8):
        if name in inits:
            return inits[name]
        node = producer.get(name)
        if node is None or node.op_type not in _PASS_THROUGH:
            return None
        name = node.input[0]
    return None
