"""The export check: does the ONNX artifact show the compression the trial claims?

A trial claims a bit-width (and at 8 bits an int8 format) and, with structured pruning, a number
of output units (Conv channels plus Gemm/MatMul/MatMulNBits neurons). The check reads the
artifact's graph and initializers, never the PyTorch model: an artifact that does not show its
claim raises ``ExportClaimError``, so the trial fails instead of reporting numbers it did not earn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trials._artifact_weights import ArtifactWeight, WeightCensus, opted_out, weight_census
from trials._check_tables import check_tables
from trials._errors import ExportClaimError
from trials._layer_weights import (
    INT4_TYPES,
    NBITS,
    LayerWeight,
    asymmetric_int4,
    input_name,
    layer_weights,
    producer_of,
)
from trials._quantize import INT4_GRID, int8_format

_QDQ = {"QuantizeLinear", "DequantizeLinear"}
_INT8_TYPES = (TensorProto.INT8, TensorProto.UINT8)
_INT_OPS = {"ConvInteger", "MatMulInteger", "MatMulNBits"}


@dataclass(frozen=True)
class ExportClaim:
    """What a trial says its artifact is.

    ``bits``: 32 fp32, 16 fp16 weights, 8 int8 QDQ/QOperator (in ``int8_format`` when given:
    per-channel or per-tensor weight scales, uint8 or int8 activations, 7-bit weights with
    reduce-range), 4 every Conv/Linear weight stored as int4 on ``[-7, 7]`` (MatMulNBits or an
    INT4 initializer behind DequantizeLinear), 2, 3, 5-7 an fp32 file holding weights on a
    ``2**bits - 1``-level grid per output channel. ``units``/``dense_units``: output units of
    the Conv/Linear layers of the compressed and of the dense model; ``structured`` claims that
    channels were removed (``units < dense_units``, and the artifact must have ``units``).
    ``keep_float`` names the modules whose weights may stay float; ``rounded`` the weights the
    trial put on a simulated width's grid itself, which ``keep_float`` never exempts.
    """

    bits: int
    units: int
    dense_units: int
    structured: bool = False
    int8_format: str | None = None
    keep_float: tuple[str, ...] = ()
    rounded: tuple[str, ...] = ()


# A claimed bit-width may leave at most this share of the artifact's weight bytes uncompressed
# (outside the layers the config lets stay float, ``quantization.keep_float``).
UNCOMPRESSED_LIMIT = 0.01


def check_export(
    path: Path, claim: ExportClaim, *, what: str, example: np.ndarray | None = None
) -> dict[str, str]:
    """Check the artifact at ``path`` against ``claim``; return the tags ``export_check=ok``,
    ``export_check_summary`` (ops and units seen) and ``weight_bytes_share`` (each precision's
    share of the weight bytes, every weight of the artifact counted). Raises
    ``ExportClaimError`` on a mismatch, and when ONNX Runtime cannot load the file (or run it
    on ``example``, when given)."""
    model = onnx.load(str(path))
    graph = model.graph
    ops = {n.op_type for n in graph.node}
    inits = {t.name: t for t in graph.initializer}
    weights, unresolved = layer_weights(graph, inits)
    units = sum(w.array.shape[0] for w in weights)
    float_weights = [
        inits[n].data_type for n in inits if len(inits[n].dims) >= 2
    ]  # data types of matrix/kernel initializers
    n_fp16 = sum(1 for t in inits.values() if t.data_type == TensorProto.FLOAT16)
    packed = {n.input[1] for n in graph.node if n.op_type == NBITS and len(n.input) > 1}
    n_int8 = sum(
        1
        for t in inits.values()
        if t.data_type in _INT8_TYPES and len(t.dims) >= 2 and t.name not in packed
    )
    n_int4 = sum(1 for w in weights if w.stored in INT4_TYPES)
    quant_ops = sorted((ops & (_QDQ | _INT_OPS)) | {o for o in ops if o.startswith("QLinear")})
    summary = (
        f"bits={claim.bits} units={units if not unresolved else '?'}/{claim.dense_units} "
        f"quant_ops={'+'.join(quant_ops) or 'none'} int8_weights={n_int8} "
        f"int4_weights={n_int4} fp16_inits={n_fp16}"
    )

    def fail(rule: str, fix: str) -> ExportClaimError:
        return ExportClaimError(
            f"{what}: the artifact must show the compression it claims: {rule}, but {path.name} "
            f"has {summary}. Fix: {fix}"
        )

    slimtune_bug = "report this as a slimtune bug; the trial's numbers are not trustworthy"
    check_tables(graph, inits, producer_of(graph), claim.bits, fail)
    if claim.bits == 8:
        if not (ops >= _QDQ or any(o.startswith("QLinear") or o in _INT_OPS for o in ops)):
            raise fail(
                "an 8-bit artifact has QuantizeLinear/DequantizeLinear or QLinear* ops",
                slimtune_bug,
            )
        if n_int8 == 0 or n_int4:
            raise fail(
                "an 8-bit artifact stores int8/uint8 weight initializers and no int4 ones",
                slimtune_bug,
            )
        floats = sorted({w.op for w in weights if w.stored not in _INT8_TYPES})
        if floats or unresolved:
            raise fail(
                "an 8-bit artifact stores every Conv/Gemm/MatMul weight as int8 "
                f"({floats or 'computed'} layers keep other weights)",
                slimtune_bug,
            )
        if claim.int8_format is not None:
            _check_int8_format(graph, inits, claim.int8_format, fail)
    elif claim.bits == 4:
        _check_int4(graph, weights, unresolved, fail)
    else:
        if quant_ops or n_int4:
            raise fail(
                f"a {claim.bits}-bit artifact has no quantization ops and no int4 weights",
                slimtune_bug,
            )
        if claim.bits == 16:
            if n_fp16 == 0 or TensorProto.FLOAT in float_weights:
                raise fail(
                    "an fp16 artifact stores every weight as a float16 initializer", slimtune_bug
                )
        elif n_fp16:
            raise fail(f"a {claim.bits}-bit artifact has no float16 initializers", slimtune_bug)
        if claim.bits < 8:
            _check_levels(weights, claim, fail)
    census = weight_census(model)
    _check_coverage(census, claim, fail)
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
    _check_loads(path, example, what=what)  # last: the rules above give the sharper reason
    return {
        "export_check": "ok",
        "export_check_summary": summary,
        "weight_bytes_share": census.share_text(),
    }


# ONNX Runtime input types -> numpy, to feed the example as the artifact's input type.
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def _check_loads(path: Path, example: np.ndarray | None, *, what: str) -> None:
    """The artifact loads in an ONNX Runtime CPU session (and runs once on ``example``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    step = "load"
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        if example is not None:
            step = "run on the example input"
            first = session.get_inputs()[0]
            dtype = _ORT_DTYPES.get(first.type, example.dtype)
            session.run(None, {first.name: np.asarray(example).astype(dtype, copy=False)})
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or ["(no message)"])[0]
        raise ExportClaimError(
            f"{what}: the artifact must {step} in ONNX Runtime, but {path.name} failed with "
            f"{type(exc).__name__}: {reason}. Fix: report this as a slimtune bug with the "
            "model; meanwhile search other bit-widths for it (bits: [32, 8])."
        ) from exc


def _check_levels(
    weights: list[LayerWeight], claim: ExportClaim, fail: Callable[[str, str], ExportClaimError]
) -> None:
    """A simulated width's weights hold at most ``2**bits - 1`` levels per output channel,
    except those ``keep_float`` lets stay float (the coverage rule bounds their share) and that
    the trial did not round itself."""
    levels = 2**claim.bits - 1
    for w in weights:
        if w.name and opted_out(w.name, claim.keep_float) and w.name not in claim.rounded:
            continue
        rows = w.array.reshape(w.array.shape[0], -1)
        most = max(len(np.unique(row)) for row in rows)
        if most > levels:
            name = w.name or "(unnamed)"
            raise fail(
                f"a simulated {claim.bits}-bit artifact holds at most {levels} weight levels "
                f"per output channel ({w.op} weight {name} has {most})",
                f"if {name} is a matrix the model multiplies with in a way slimtune cannot map "
                "to output units (a slice, two orientations; x @ w, w @ x, x @ w.t(), "
                "F.linear(x, w) and einsum are put on the grid), keep it float by name "
                f"(quantization.keep_float: [{name}]) or use an nn.Linear; otherwise report "
                "this as a slimtune bug, the trial's numbers are not trustworthy",
            )


def _covered(weight: ArtifactWeight, bits: int) -> bool:
    """Whether ``weight`` is stored as a ``bits``-bit claim says."""
    if bits >= 32:
        return True
    if bits == 16:
        return weight.precision == "fp16"
    if bits in (8, 4):
        return weight.precision == f"int{bits}"
    return weight.on_grid(bits)


def _check_coverage(
    census: WeightCensus, claim: ExportClaim, fail: Callable[[str, str], ExportClaimError]
) -> None:
    """A claimed bit-width describes every weight of the artifact: the weights it leaves
    uncompressed (outside ``keep_float``) hold at most ``UNCOMPRESSED_LIMIT`` of the weight
    bytes; each ``keep_float`` name matches a weight."""
    names = [w.name for w in census.weights]
    unmatched = [e for e in claim.keep_float if not any(opted_out(n, [e]) for n in names)]
    if unmatched:
        raise fail(
            f"quantization.keep_float names modules whose weights are in the artifact "
            f"({unmatched} match none of {names[:12]})",
            "list the model's module names (model.named_modules()), e.g. keep_float: [gru]",
        )
    left = [
        w
        for w in census.weights
        if not _covered(w, claim.bits) and not opted_out(w.name, claim.keep_float)
    ]
    share = sum(w.nbytes for w in left) / (census.total_bytes or 1)
    if share > UNCOMPRESSED_LIMIT:
        shown = ", ".join(f"{w.name} ({w.op}, {w.precision}, {w.nbytes} B)" for w in left[:5])
        raise fail(
            f"a {claim.bits}-bit artifact stores every weight at that width, leaving at most "
            f"{UNCOMPRESSED_LIMIT:.0%} of the weight bytes uncompressed; {share:.1%} are not: "
            f"{shown}{' ...' if len(left) > 5 else ''} (weight bytes {census.share_text()})",
            "let those layers stay float by name (quantization.keep_float: "
            f"[{', '.join(_modules(left))}]), or search bits: [32] (16 for fp16 weights) for "
            "this model",
        )


def _modules(weights: list[ArtifactWeight]) -> list[str]:
    """The module names of weights named after parameters (``rnn.weight_hh_l0`` -> ``rnn``);
    a parameter of the model itself by its own name (``w``), which ``keep_float`` matches."""
    names = (s.rsplit(".", 1)[0] if "." in s else s for w in weights for s in w.name.split("+"))
    return list(dict.fromkeys(names)) or ["<module>"]


def _check_int4(
    graph: onnx.GraphProto,
    weights: list[LayerWeight],
    unresolved: int,
    fail: Callable[[str, str], ExportClaimError],
) -> None:
    """Every Conv/Linear weight int4, symmetric, on ``[-7, 7]``: MatMulNBits with ``bits=4``
    and no zero points, or an INT4 initializer behind a DequantizeLinear with zero point 0."""
    bug = "report this as a slimtune bug; the trial's numbers are not trustworthy"
    floats = sorted({w.op for w in weights if w.stored not in INT4_TYPES})
    if unresolved or not weights or floats:
        raise fail(
            "a 4-bit artifact stores every Conv/Linear weight as int4 (MatMulNBits with bits=4, "
            "or an INT4 initializer behind DequantizeLinear)"
            + (f"; {floats} layers keep other weights" if floats else ""),
            bug,
        )
    inits = {t.name: t for t in graph.initializer}
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == NBITS and (attrs.get("bits") != 4 or input_name(node, 3)):
            raise fail("a 4-bit artifact's MatMulNBits have bits=4 and no zero points", bug)
        if node.op_type == "DequantizeLinear" and asymmetric_int4(node, inits):
            raise fail("a 4-bit artifact's int4 weights are symmetric (zero point 0)", bug)
    lowest = min(int(w.array.min()) for w in weights)
    highest = max(int(w.array.max()) for w in weights)
    if lowest < -INT4_GRID.qmax or highest > INT4_GRID.qmax:
        raise fail(
            f"a 4-bit artifact's weights lie on the grid fine-tuning used, {INT4_GRID.describe()} "
            f"(seen [{lowest}, {highest}])",
            bug,
        )


def _check_int8_format(
    graph: onnx.GraphProto,
    inits: dict[str, TensorProto],
    name: str,
    fail: Callable[[str, str], ExportClaimError],
) -> None:
    """The int8 format claimed: weight scales per channel or per tensor, weights within
    ``[-64, 64]`` exactly when reduce-range, activations of the claimed type."""
    fmt = int8_format(name)
    bug = "report this as a slimtune bug; the trial's numbers are not trustworthy"
    peaks: list[int] = []
    tables = {  # embedding tables are per row in every format (checked by _check_tables)
        n.input[0] for n in graph.node if n.op_type == "Gather"
    }
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            if set(node.output) & tables:
                continue
            w = inits[node.input[0]]
            if (
                w.data_type not in _INT8_TYPES
                or len(w.dims) < 2
                or input_name(node, 1) not in inits
            ):
                continue
            scales = int(np.prod(inits[node.input[1]].dims))
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            expected = int(w.dims[axis]) if fmt.per_channel else 1
            if scales != expected:
                raise fail(
                    f"format {fmt.name} has {'per-channel' if fmt.per_channel else 'per-tensor'} "
                    f"weight scales ({expected} for {node.input[0]}, seen {scales})",
                    bug,
                )
            peaks.append(int(np.abs(numpy_helper.to_array(w).astype(np.int32)).max()))
        if node.op_type == "QuantizeLinear":
            zero = input_name(node, 2)
            kind = inits[zero].data_type if zero in inits else TensorProto.UINT8
            want = TensorProto.UINT8 if fmt.activations == "u8" else TensorProto.INT8
            if kind != want:
                raise fail(
                    f"format {fmt.name} quantizes activations to "
                    f"{TensorProto.DataType.Name(want).lower()}",
                    bug,
                )
    if peaks and (max(peaks) > fmt.grid.qmax or (not fmt.reduce_range and max(peaks) <= 64)):
        raise fail(
            f"format {fmt.name} stores weights on {fmt.grid.describe()} (largest |q| seen "
            f"{max(peaks)})",
            bug,
        )
