"""Embedding tables (``nn.Embedding``: a ``Gather`` of a constant matrix) at every bit-width.

- 8 bits: the table is stored as int8 **per row** (axis 0: one fp32 scale per token, symmetric
  ``[-127, 127]``, zero point 0) behind a ``DequantizeLinear(axis=0)`` that feeds the ``Gather``.
  ONNX Runtime's static quantizer would give a table one per-tensor scale, so slimtune keeps the
  table out of ``quantize_static`` and writes it itself.
- 4 bits: the table is stored as int4 rows on ``INT4_GRID`` (``[-7, 7]``, one scale per row,
  repeated in every block) in ONNX Runtime's ``com.microsoft.GatherBlockQuantized``, which reads
  the int4 codes directly and dequantizes only the gathered rows.
- 2, 3, 5-7 bits (simulated) and 32: fp32; the simulated artifacts hold rows fake-quantized on
  the width's grid (``table_grid``). 16: float16 (``onnxconverter_common``).

A table also used by another op (a tied output projection) is left as the exporter wrote it.
PyTorch's side (qat fake-quantizes the rows on the same grid; ptq rounds them) is
``table_grid`` with ``trials._compress.attach``/``round_to_grid``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from searchspace import SIMULATED_BITS
from trials._errors import QuantizationError
from trials._quantize import INT4_GRID, WeightGrid, weight_grid

# int8 tables: per row, the full int8 range whatever the int8 format (its reduce-range and
# per-tensor options concern the int8 GEMM kernels; a Gather only dequantizes rows).
TABLE_INT8_GRID = WeightGrid(qmax=127, per_channel=True)
_MS_DOMAIN = "com.microsoft"


def embedding_layers(model: nn.Module) -> list[nn.Embedding]:
    """The model's ``nn.Embedding`` modules, in module order."""
    return [m for m in model.modules() if isinstance(m, nn.Embedding)]


def table_grid(bits: int) -> WeightGrid | None:
    """The grid an embedding table's rows are stored on at ``bits`` (None: float)."""
    if bits == 8:
        return TABLE_INT8_GRID
    if bits == 4:
        return INT4_GRID
    if bits in SIMULATED_BITS:
        return weight_grid(bits)
    return None


@dataclass(frozen=True)
class TableExport:
    """What the exported artifact holds for the embedding tables: how many tables and
    weights, and in which form (the ``embeddings`` tag)."""

    tables: int
    weights: int
    form: str

    def tag(self) -> str:
        return f"{self.form}: {self.tables} tables, {self.weights} weights"


def table_form(bits: int) -> str:
    """The ``embeddings`` tag's description of the tables' form at ``bits``."""
    if bits == 8:
        return "int8 per row (axis 0) behind DequantizeLinear feeding Gather"
    if bits == 4:
        return "int4 per row in com.microsoft.GatherBlockQuantized"
    if bits == 16:
        return "fp16"
    if bits in SIMULATED_BITS:
        return f"fp32 holding rows fake-quantized on {weight_grid(bits).describe()} (simulated)"
    return "fp32"


def describe_tables(model: nn.Module, bits: int) -> TableExport | None:
    """The ``embeddings`` tag's summary of ``model``'s tables at ``bits``; None without tables."""
    tables = embedding_layers(model)
    if not tables:
        return None
    weights = sum(m.weight.numel() for m in tables)
    return TableExport(tables=len(tables), weights=weights, form=table_form(bits))


def gather_tables(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Constant 2-D float tables read only by ``Gather(axis=0)`` nodes: name -> those nodes."""
    inits = {t.name: t for t in graph.initializer}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in set(node.input):
            if name in inits:
                users.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    return {
        name: nodes
        for name, nodes in users.items()
        if len(inits[name].dims) == 2
        and inits[name].data_type == TensorProto.FLOAT
        and name not in outputs
        and all(n.op_type == "Gather" and n.input[0] == name and _axis(n) == 0 for n in nodes)
    }


def quantize_tables(path: Path, bits: int, *, what: str) -> int:
    """Rewrite the Gather tables of the ONNX file at ``path`` in place as ``bits`` says (8:
    int8 rows + DequantizeLinear; 4: GatherBlockQuantized); returns how many were rewritten."""
    if bits not in (8, 4):
        return 0
    try:
        model = onnx.load(str(path))
        graph = model.graph
        tables = gather_tables(graph)
        for name, nodes in tables.items():
            if bits == 8:
                _as_int8(graph, name)
            else:
                _as_gather_block_quantized(graph, name, nodes)
        if tables and bits == 4 and not any(o.domain == _MS_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(_MS_DOMAIN, 1))
        if tables:
            onnx.save_model(model, str(path))
    except Exception as exc:
        raise QuantizationError(
            f"{what}: storing the embedding tables at {bits} bits (per-row int{bits}) must "
            f"succeed, but it failed with {type(exc).__name__}: {str(exc).strip()[:300]}. Fix: "
            "report this as a slimtune bug; meanwhile search bits: [32, 16] for this model."
        ) from exc
    return len(tables)


def row_codes(table: np.ndarray, grid: WeightGrid) -> tuple[np.ndarray, np.ndarray]:
    """``(q, scale)`` of a ``[rows, dim]`` table on ``grid`` per row: int8 codes in
    ``[-qmax, qmax]`` and one fp32 scale per row (``max|row| / qmax``; 1 for a zero row)."""
    scale = np.abs(table).max(axis=1).astype(np.float32) / grid.qmax
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(table / scale[:, None]), -grid.qmax, grid.qmax).astype(np.int8)
    return q, scale


def _as_int8(graph: onnx.GraphProto, name: str) -> None:
    init = next(t for t in graph.initializer if t.name == name)
    q, scale = row_codes(numpy_helper.to_array(init).astype(np.float32), TABLE_INT8_GRID)
    graph.initializer.remove(init)
    graph.initializer.extend(
        [
            numpy_helper.from_array(q, f"{name}_quantized"),
            numpy_helper.from_array(scale, f"{name}_scale"),
            numpy_helper.from_array(np.zeros(len(scale), np.int8), f"{name}_zero_point"),
        ]
    )
    dq = helper.make_node(
        "DequantizeLinear",
        [f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"],
        [name],
        name=f"{name}_DequantizeLinear",
        axis=0,
    )
    graph.node.insert(0, dq)


def _as_gather_block_quantized(
    graph: onnx.GraphProto, name: str, nodes: list[onnx.NodeProto]
) -> None:
    """The table as int4 codes ``[rows, dim]`` (no padding: ONNX Runtime takes a last block
    shorter than ``block_size``) and scales ``[rows, blocks]``, each row's scale in every block;
    each Gather of it becomes a GatherBlockQuantized with the same indices and output."""
    init = next(t for t in graph.initializer if t.name == name)
    table = numpy_helper.to_array(init).astype(np.float32)
    dim = table.shape[1]
    block = _block_size(dim)
    blocks = -(-dim // block)
    q, scale = row_codes(table, INT4_GRID)
    graph.initializer.remove(init)
    graph.initializer.extend(
        [
            numpy_helper.from_array(q.astype(ml_dtypes.int4), f"{name}_int4"),
            numpy_helper.from_array(np.repeat(scale[:, None], blocks, 1), f"{name}_int4_scales"),
        ]
    )
    for node in nodes:
        gbq = helper.make_node(
            "GatherBlockQuantized",
            [f"{name}_int4", node.input[1], f"{name}_int4_scales"],
            list(node.output),
            name=f"{node.name or name}_int4",
            domain=_MS_DOMAIN,
            gather_axis=0,
            quantize_axis=-1,
            block_size=block,
        )
        index = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(index, gbq)


def _block_size(dim: int) -> int:
    """GatherBlockQuantized's block along a row: a power of two from 16, up to 128."""
    block = 16
    while block < min(dim, 128):
        block *= 2
    return block


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)
