"""The export check's rule for lookup tables (``nn.Embedding``): stored as the trial's bit-width
says (``trials._tables``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from trials._errors import ExportClaimError
from trials._layer_weights import INT4_TYPES, constant, input_name

_INT8_TYPES = (TensorProto.INT8, TensorProto.UINT8)


def check_tables(
    graph: onnx.GraphProto,
    inits: dict[str, TensorProto],
    producer: dict[str, onnx.NodeProto],
    bits: int,
    fail: Callable[[str, str], ExportClaimError],
) -> None:
    """Lookup tables (a Gather of a constant matrix: ``nn.Embedding``) are stored as the
    trial's ``embeddings`` tag says (``trials._tables``): int8 per row behind a
    DequantizeLinear(axis=0) with zero point 0 at 8 bits, int4 in GatherBlockQuantized at 4,
    fp16 at 16, fp32 otherwise. A table another op also reads (a tied projection) is left to
    the coverage rule."""
    bug = "report this as a slimtune bug; the trial's numbers are not trustworthy"
    readers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    for node in graph.node:
        if node.op_type not in ("Gather", "GatherBlockQuantized"):
            continue
        table = constant(node.input[0], inits, producer)
        if table is None or len(table.dims) < 2 or readers.get(table.name, set()) - _TABLE_READERS:
            continue
        if table.data_type not in _TABLE_TYPES:
            continue  # an index table (int64), not weights
        seen = TensorProto.DataType.Name(table.data_type).lower()
        want = {16: "float16", 8: "int8", 4: "int4"}.get(bits, "float")
        dq = producer.get(node.input[0])
        if bits == 4:
            ok = node.op_type == "GatherBlockQuantized" and table.data_type == TensorProto.INT4
            ok = ok and not input_name(node, 3)
        elif bits == 8:
            ok = (
                node.op_type == "Gather"
                and table.data_type == TensorProto.INT8
                and dq is not None
                and dq.op_type == "DequantizeLinear"
                and _per_row_symmetric(dq, table, inits)
            )
        else:
            ok = node.op_type == "Gather" and table.data_type == (
                TensorProto.FLOAT16 if bits == 16 else TensorProto.FLOAT
            )
        if not ok:
            raise fail(
                f"a {bits}-bit artifact stores its embedding tables as {want}"
                + (" per row (axis 0, zero point 0)" if bits == 8 else "")
                + (" in GatherBlockQuantized" if bits == 4 else "")
                + f" (the {node.op_type} of {table.name} reads {seen})",
                bug,
            )


_TABLE_READERS = {"Gather", "GatherBlockQuantized", "DequantizeLinear"}
_TABLE_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
_TABLE_TYPES |= {*_INT8_TYPES, *INT4_TYPES}


def _per_row_symmetric(
    dq: onnx.NodeProto, table: TensorProto, inits: dict[str, TensorProto]
) -> bool:
    """A DequantizeLinear of ``table`` with one scale per row (axis 0) and zero point 0."""
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    scale, zero = input_name(dq, 1), input_name(dq, 2)
    if axis != 0 or scale not in inits or int(np.prod(inits[scale].dims)) != table.dims[0]:
        return False
    return not zero or (zero in inits and not numpy_helper.to_array(inits[zero]).any())
