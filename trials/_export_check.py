"""The export check: does the ONNX artifact show the compression the trial claims?

A trial claims a bit-width and, with structured pruning, a number of output units (Conv channels
plus Gemm/MatMul neurons). The check reads the artifact's graph and initializers, never the
PyTorch model: an artifact that does not show its claim raises ``ExportClaimError``, so the trial
fails instead of reporting numbers it did not earn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from trials._errors import ExportClaimError

_QDQ = {"QuantizeLinear", "DequantizeLinear"}
_INT_OPS = {"ConvInteger", "MatMulInteger", "MatMulNBits"}
# Ops a weight may pass through between its initializer and the Conv/Gemm/MatMul using it.
_PASS_THROUGH = {"DequantizeLinear", "Cast", "Identity"}


@dataclass(frozen=True)
class ExportClaim:
    """What a trial says its artifact is.

    ``bits``: 32 fp32, 16 fp16 weights, 8 int8 QDQ/QOperator, 2-7 fp32 file holding weights on a
    ``2**bits - 1``-level grid per output channel. ``units``/``dense_units``: output units of
    the Conv/Linear layers of the compressed and of the dense model; ``structured`` claims that
    channels were removed (``units < dense_units``, and the artifact must have ``units``).
    """

    bits: int
    units: int
    dense_units: int
    structured: bool = False


@dataclass(frozen=True)
class _Weight:
    op: str
    array: np.ndarray  # output units on axis 0


def check_export(path: Path, claim: ExportClaim, *, what: str) -> dict[str, str]:
    """Check the artifact at ``path`` against ``claim``; return the tags ``export_check=ok`` and
    ``export_check_summary`` (ops and units seen). Raises ``ExportClaimError`` on a mismatch."""
    model = onnx.load(str(path))
    graph = model.graph
    ops = {n.op_type for n in graph.node}
    inits = {t.name: t for t in graph.initializer}
    weights, unresolved = _layer_weights(graph, inits)
    units = sum(w.array.shape[0] for w in weights)
    float_weights = [
        inits[n].data_type for n in inits if len(inits[n].dims) >= 2
    ]  # data types of matrix/kernel initializers
    n_fp16 = sum(1 for t in inits.values() if t.data_type == TensorProto.FLOAT16)
    n_int8 = sum(
        1
        for t in inits.values()
        if t.data_type in (TensorProto.INT8, TensorProto.UINT8) and len(t.dims) >= 2
    )
    quant_ops = sorted((ops & (_QDQ | _INT_OPS)) | {o for o in ops if o.startswith("QLinear")})
    summary = (
        f"bits={claim.bits} units={units if not unresolved else '?'}/{claim.dense_units} "
        f"quant_ops={'+'.join(quant_ops) or 'none'} int8_weights={n_int8} fp16_inits={n_fp16}"
    )

    def fail(rule: str, fix: str) -> ExportClaimError:
        return ExportClaimError(
            f"{what}: the artifact must show the compression it claims: {rule}, but {path.name} "
            f"has {summary}. Fix: {fix}"
        )

    slimtune_bug = "report this as a slimtune bug; the trial's numbers are not trustworthy"
    if claim.bits == 8:
        if not (ops >= _QDQ or any(o.startswith("QLinear") or o in _INT_OPS for o in ops)):
            raise fail(
                "an 8-bit artifact has QuantizeLinear/DequantizeLinear or QLinear* ops",
                slimtune_bug,
            )
        if n_int8 == 0:
            raise fail("an 8-bit artifact stores int8/uint8 weight initializers", slimtune_bug)
    else:
        if quant_ops:
            raise fail(f"a {claim.bits}-bit artifact has no quantization ops", slimtune_bug)
        if claim.bits == 16:
            if n_fp16 == 0 or TensorProto.FLOAT in float_weights:
                raise fail(
                    "an fp16 artifact stores every weight as a float16 initializer", slimtune_bug
                )
        elif n_fp16:
            raise fail(f"a {claim.bits}-bit artifact has no float16 initializers", slimtune_bug)
        if claim.bits < 8:
            levels = 2**claim.bits - 1
            for w in weights:
                rows = w.array.reshape(w.array.shape[0], -1)
                most = max(len(np.unique(row)) for row in rows)
                if most > levels:
                    raise fail(
                        f"a simulated {claim.bits}-bit artifact holds at most {levels} weight "
                        f"levels per output channel ({w.op} has {most})",
                        slimtune_bug,
                    )
    if claim.structured:
        if unresolved:
            raise fail(
                "structured pruning is claimed, so every Conv/Gemm weight must be readable "
                f"({unresolved} are computed in the graph)",
                "search pruning: unstructured for this model",
            )
        if not (claim.units < claim.dense_units and units == claim.units):
            raise fail(
                f"structured pruning is claimed: {claim.units} output units of the dense "
                f"{claim.dense_units}",
                slimtune_bug,
            )
    return {"export_check": "ok", "export_check_summary": summary}


def _layer_weights(
    graph: onnx.GraphProto, inits: dict[str, TensorProto]
) -> tuple[list[_Weight], int]:
    """The weight of each Conv/Gemm/MatMul-with-constant-weight node, output units on axis 0;
    and how many such nodes have a weight the graph computes (not readable here)."""
    producer = {out: node for node in graph.node for out in node.output}
    weights: list[_Weight] = []
    unresolved = 0
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        array = _constant(node.input[1], inits, producer)
        if array is None:
            # A MatMul between two activations is no layer; a Conv/Gemm weight should resolve.
            unresolved += node.op_type != "MatMul"
            continue
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            array = array if trans_b else array.T
        elif node.op_type == "MatMul":
            if array.ndim != 2:
                continue
            array = array.T
        weights.append(_Weight(node.op_type, array))
    return weights, unresolved


def _constant(
    name: str, inits: dict[str, TensorProto], producer: dict[str, onnx.NodeProto]
) -> np.ndarray | None:
    for _ in range(8):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        node = producer.get(name)
        if node is None or node.op_type not in _PASS_THROUGH:
            return None
        name = node.input[0]
    return None
