"""Embedding tables at every bit-width (trials._tables): int8 rows + DequantizeLinear feeding
the Gather, int4 rows in GatherBlockQuantized, fake-quantized rows in simulated artifacts; the
export check and the tags say which form each table has."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper
from torch import nn

from trials import ExportClaim, ExportClaimError, check_export
from trials._export import export_onnx, quantize_int4, quantize_int8
from trials._int8_fidelity import FLOOR, kernel_deviation
from trials._quantize import INT4_GRID, int8_format
from trials._structured import output_units
from trials._tables import TABLE_INT8_GRID, row_codes
from trials.tasks._transformer import TransformerTask

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")


class _Tied(nn.Module):
    """A table of 37 rows of width 40 (not a multiple of GatherBlockQuantized's block, 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(37, 40)
        self.head = nn.Linear(40, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(x.long()).mean(1))


def _run(path: Path, x: np.ndarray, *, optimized: bool = True) -> np.ndarray:
    """``path``'s output for ``x``; ``optimized=False``: its QDQ math in float (no int8 kernels)."""
    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, {session.get_inputs()[0].name: x})[0]
    return out


@pytest.fixture(scope="module")
def transformer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, int]:
    """The built-in transformer task's model (seeded, untrained: the tables are what is
    tested), exported fp32, and 256 validation sequences."""
    torch.manual_seed(0)
    task = TransformerTask()
    model = task.build_model().eval()
    path = tmp_path_factory.mktemp("emb") / "fp32.onnx"
    export_onnx(model, task.example_input().float(), path, what="test")
    x, _ = task.val_data()
    return path, x[:256].float().numpy(), output_units(model)


@pytest.mark.parametrize(
    "fmt", ["u8s8-per-channel", "s8s8-per-tensor", "u8s8-per-channel-reduce-range"]
)
def test_int8_tables_are_per_row_int8_and_outputs_stay_close(
    transformer: tuple[Path, np.ndarray, int], tmp_path: Path, fmt: str
) -> None:
    fp32, x, units = transformer
    int8 = tmp_path / "int8.onnx"
    # Tables are per row in every int8 format (its per-tensor/reduce-range options concern the
    # int8 GEMM kernels); the format check applies to the layers' weights.
    quantize_int8(fp32, int8, x[:64], what="test", fmt=int8_format(fmt))
    model = onnx.load(str(int8))
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    gathers = [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] in producer]
    dqs = [producer[g.input[0]] for g in gathers]
    tables = [n for n in dqs if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert tables, [n.op_type for n in model.graph.node]
    for dq in tables:
        q = inits[dq.input[0]]
        assert q.data_type == TensorProto.INT8
        assert next(a.i for a in dq.attribute if a.name == "axis") == 0
        assert int(np.prod(inits[dq.input[1]].dims)) == q.dims[0]  # one scale per row
    tags = check_export(
        int8,
        ExportClaim(bits=8, units=units, dense_units=units, int8_format=fmt),
        what="test",
        example=x[:1],
    )
    assert "fp32" not in tags["weight_bytes_share"].split(",")[0]
    # The int8 file's math (tables and every MatMul int8, activations quantized) agrees with
    # fp32, on every CPU.
    ref, math_ = _run(fp32, x), _run(int8, x, optimized=False)
    assert np.mean(ref.argmax(1) == math_.argmax(1)) >= 0.9
    assert np.abs(ref - math_).max() <= 0.1 * np.abs(ref).max()
    # So do this CPU's int8 kernels, unless they do not compute that math (full-range formats
    # saturate on x86 without VNNI), which the check of int8_format: auto must then find.
    got = _run(int8, x)
    close = np.abs(ref - got).max() <= 0.1 * np.abs(ref).max()
    assert close or kernel_deviation(int8.read_bytes(), x[:16]) > FLOOR


def test_int4_tables_are_gather_block_quantized(
    transformer: tuple[Path, np.ndarray, int], tmp_path: Path
) -> None:
    fp32, x, units = transformer
    int4 = tmp_path / "int4.onnx"
    quantize_int4(fp32, int4, what="test")
    model = onnx.load(str(int4))
    ops = [n.op_type for n in model.graph.node]
    inits = {t.name for t in model.graph.initializer}
    assert "GatherBlockQuantized" in ops
    assert not [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] in inits]
    tags = check_export(
        int4, ExportClaim(bits=4, units=units, dense_units=units), what="test", example=x[:1]
    )
    assert tags["weight_bytes_share"].startswith("int4=1.000"), tags["weight_bytes_share"]
    ref, got = _run(fp32, x), _run(int4, x)
    assert np.mean(ref.argmax(1) == got.argmax(1)) >= 0.8


def test_a_table_whose_width_is_no_block_multiple_exports_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _Tied().eval()
    x = torch.randint(0, 37, (16, 7)).float()
    fp32, int4, int8 = tmp_path / "f.onnx", tmp_path / "i4.onnx", tmp_path / "i8.onnx"
    export_onnx(model, x[:1], fp32, what="test")
    quantize_int4(fp32, int4, what="test")
    quantize_int8(fp32, int8, x.numpy(), what="test")
    # The rows dequantize to exactly the per-row grid's values (the table's part of the output).
    table = model.emb.weight.detach().numpy()
    q, _ = row_codes(table, TABLE_INT8_GRID)
    stored = onnx.load(str(int8))
    codes = next(
        numpy_helper.to_array(t)
        for t in stored.graph.initializer
        if t.name.endswith("_quantized") and t.dims[0] == 37
    )
    assert np.array_equal(codes, q)
    # int4: the table's codes as they are, no padding columns (they would count as zeros).
    packed = next(t for t in onnx.load(str(int4)).graph.initializer if t.name == "emb.weight_int4")
    assert packed.data_type == TensorProto.INT4 and list(packed.dims) == [37, 40]
    q4, _ = row_codes(table, INT4_GRID)
    assert np.array_equal(numpy_helper.to_array(packed).astype(np.int8), q4)
    for path in (int4, int8):
        got = _run(path, x.numpy())
        assert got.shape == (16, 5)
        assert np.abs(got - _run(fp32, x.numpy())).max() < 0.05 * np.abs(table).max() + 0.05


def test_the_check_fails_a_table_left_fp32_in_an_int8_claim(
    transformer: tuple[Path, np.ndarray, int], tmp_path: Path
) -> None:
    fp32, x, units = transformer
    int8 = tmp_path / "int8.onnx"
    quantize_int8(fp32, int8, x[:64], what="test")
    model = onnx.load(str(int8))
    inits = {t.name: t for t in model.graph.initializer}
    dq = next(
        n
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        and next(a.i for a in n.attribute if a.name == "axis") == 0
        and any(g.op_type == "Gather" and g.input[0] == n.output[0] for g in model.graph.node)
    )
    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(inits[dq.input[1]])
    model.graph.node.remove(dq)
    model.graph.initializer.append(numpy_helper.from_array(q * scale[:, None], dq.output[0]))
    forged = tmp_path / "forged.onnx"
    onnx.save(model, str(forged))
    claim = ExportClaim(bits=8, units=units, dense_units=units)
    with pytest.raises(ExportClaimError, match="embedding tables as int8 per row"):
        check_export(forged, claim, what="test")
    # Opting the table out by name does not change its form rule: the tag must stay true.
    claim = ExportClaim(bits=8, units=units, dense_units=units, keep_float=("emb",))
    with pytest.raises(ExportClaimError, match="embedding tables"):
        check_export(forged, claim, what="test")
    # The opt-out still works on the true artifact (the name matches the table).
    assert check_export(int8, claim, what="test")["export_check"] == "ok"


class _Lookup(nn.Module):
    """An int64 index table gathered in forward (not weights) next to a float embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("lut", torch.arange(40).view(20, 2) % 16)
        self.emb = nn.Embedding(16, 32)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = self.lut.index_select(0, x.long().flatten()).view(x.shape[0], -1)  # a Gather
        return self.head(self.emb(ids).mean(1))


@pytest.mark.parametrize("bits", [32, 8, 4])
def test_an_index_table_is_not_taken_for_an_embedding(bits: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _Lookup().eval()
    x = torch.randint(0, 20, (32, 5)).float()
    fp32, out = tmp_path / "f.onnx", tmp_path / "q.onnx"
    export_onnx(model, x[:1], fp32, what="test")
    if bits == 8:
        quantize_int8(fp32, out, x.numpy(), what="test")
    elif bits == 4:
        quantize_int4(fp32, out, what="test")
    path = fp32 if bits == 32 else out
    claim = ExportClaim(bits=bits, units=3, dense_units=3)
    assert check_export(path, claim, what="test", example=x[:1].numpy())["export_check"] == "ok"
