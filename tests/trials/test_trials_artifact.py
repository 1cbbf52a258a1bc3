"""Honest artifacts on models beyond Conv/Linear (issue 18 items 1-5, issue 12 item 3): widths
rounded, no exporter metadata in the file, fp16 through a ``.float()``, the export check loading
the file in ONNX Runtime, pruning scope and cap, sparsity and the claim counted over every
weight of the artifact (GRU, ``nn.MultiheadAttention``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnxconverter_common import float16
from torch import nn

from searchspace import TrialParams, layer_sparsity_cap, parse_spec, to_distributions
from trials import (
    ExportClaim,
    ExportClaimError,
    PruningError,
    Task,
    TrialSettings,
    check_export,
    run_trial,
)
from trials._artifact_weights import artifact_sparsity, weight_census
from trials._compress import magnitude_masks, round_to_grid, weight_sparsity
from trials._export import convert_fp16, export_onnx, quantize_int4, quantize_int8
from trials._quantize import weight_grid
from trials._structured import kept_width, prune_structured

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


class GruNet(nn.Module):
    """A GRU classifier: most weights are the GRU's, the head is 8 x 32."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(12, 32, batch_first=True)
        self.head = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


class AttentionNet(nn.Module):
    """Linear embedding, ``nn.MultiheadAttention`` (in_proj is a parameter), mean pool, head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head(a.mean(1))


class CastNet(nn.Module):
    """A ``.float()`` of a mask and of a position index inside forward."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(12, 16)
        self.b = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h = h * (h > 0).float() + torch.arange(16, device=x.device).float() / 16
        return self.b(h)


SEQ = torch.randn(1, 6, 12)


def _export(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    torch.manual_seed(0)
    export_onnx(model.eval(), example, path, what="test")
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return np.asarray(ort.InferenceSession(str(path)).run(None, {"input": x})[0])


# 18.1: widths rounded to a multiple of round_to.


def test_kept_width_rounds_to_the_nearest_multiple_never_to_zero_or_past_dense() -> None:
    assert kept_width(64, 0.18, 8) == 48 + 8  # 52.5 -> 56
    assert kept_width(120, 0.18, 8) == 96  # 98.4 -> 96
    assert kept_width(64, 0.18, 1) == 52  # round_to 1: the exact ratio
    assert kept_width(64, 0.97, 8) == 8  # never 0
    assert kept_width(4, 0.5, 8) == 2  # narrower than round_to: unrounded
    assert kept_width(12, 0.05, 8) == 8  # 11.4: 16 would pass the dense 12
    for dense in range(1, 70):
        for ratio in (0.0, 0.1, 0.33, 0.5, 0.9):
            width = kept_width(dense, ratio, 8)
            assert 1 <= width <= dense
            assert width % 8 == 0 or dense < 8


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(1, 64, 3, padding=1),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.Conv1d(64, 128, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(128 * 10, 40),
        nn.ReLU(),
        nn.Linear(40, 10),
    )


@pytest.mark.parametrize("ratio", [0.18, 0.3, 0.6])
def test_structured_pruning_keeps_widths_multiples_of_round_to(ratio: float) -> None:
    example = torch.randn(2, 1, 10)
    rounded = prune_structured(_cnn(), example, ratio, what="t")
    exact = prune_structured(_cnn(), example, ratio, what="t", round_to=1)
    assert all(w % 8 == 0 for w in rounded.widths[:-1]), rounded.widths
    assert rounded.widths[-1] == 10 and exact.widths[-1] == 10
    assert rounded.widths[:-1] == tuple(kept_width(d, ratio, 8) for d in (64, 128, 40))
    assert exact.widths[:-1] == tuple(kept_width(d, ratio, 1) for d in (64, 128, 40))


def test_round_to_is_a_validated_config_field() -> None:
    assert parse_spec("experiment: x\ntask: digits\n").pruning.round_to == 8
    assert parse_spec("experiment: x\ntask: digits\npruning: {round_to: 1}\n").pruning.round_to == 1
    for bad in ("0", "-8", "2.5", "eight"):
        with pytest.raises(Exception, match=r"pruning.round_to"):
            parse_spec(f"experiment: x\ntask: digits\npruning: {{round_to: {bad}}}\n")


# 18.2: no exporter metadata in the artifact; ORT outputs bit-identical.


def _debug_entries(model: onnx.ModelProto) -> int:
    graph = model.graph
    items = [*graph.node, *graph.value_info, *graph.input, *graph.output, *graph.initializer]
    found = sum(len(i.metadata_props) + bool(i.doc_string) for i in items)
    found += sum(1 for p in [*model.metadata_props, *graph.metadata_props] if "pkg." in p.key)
    return found + bool(model.doc_string) + bool(graph.doc_string)


@pytest.mark.parametrize("make", [GruNet, AttentionNet])
def test_artifact_has_no_exporter_metadata_and_computes_the_same(
    make: type[nn.Module], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = make().eval()
    raw = tmp_path / "raw.onnx"
    torch.onnx.export(
        model,
        (torch.cat([SEQ, SEQ]),),
        str(raw),
        dynamo=True,
        external_data=False,
        input_names=["input"],
        dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
    )
    assert _debug_entries(onnx.load(str(raw))) > 20  # what the exporter writes
    lean = _export(model, SEQ, tmp_path / "lean.onnx")
    stripped = onnx.load(str(lean))
    assert _debug_entries(stripped) == 0
    assert "pkg.torch" not in lean.read_bytes().decode("latin-1")
    assert lean.stat().st_size < 0.75 * raw.stat().st_size
    assert stripped.opset_import == onnx.load(str(raw)).opset_import
    # The model's own names stay; folded weights get back the parameter names they came from.
    names = {t.name for t in stripped.graph.initializer}
    assert "head.weight" in names
    assert {"gru.weight_hh_l0", "attn.in_proj_weight"} & names
    x = np.random.default_rng(0).standard_normal((5, 6, 12)).astype(np.float32)
    assert np.array_equal(_run(lean, x), _run(raw, x))


def test_every_format_is_stripped(tmp_path: Path) -> None:
    fp32 = _export(AttentionNet(), SEQ, tmp_path / "fp32.onnx")
    calibration = np.random.default_rng(0).standard_normal((16, 6, 12)).astype(np.float32)
    quantize_int8(fp32, tmp_path / "int8.onnx", calibration, what="t")
    quantize_int4(fp32, tmp_path / "int4.onnx", what="t")
    convert_fp16(fp32, tmp_path / "fp16.onnx", what="t")
    for name in ("fp32", "int8", "int4", "fp16"):
        assert _debug_entries(onnx.load(str(tmp_path / f"{name}.onnx"))) == 0, name


# 18.3: fp16 through a .float(); the export check loads the file in ORT.


def test_fp16_converts_the_models_own_float_casts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CastNet().eval()
    example = torch.randn(1, 12)
    fp32 = _export(model, example, tmp_path / "fp32.onnx")
    out = tmp_path / "fp16.onnx"
    assert convert_fp16(fp32, out, what="t") >= 1
    x = np.random.default_rng(0).standard_normal((4, 12)).astype(np.float32)
    expected = model(torch.from_numpy(x)).detach().numpy()
    assert np.abs(_run(out, x) - expected).max() < 0.02
    tags = check_export(out, ExportClaim(16, 24, 24), what="t", example=x[:1])
    assert tags["export_check"] == "ok" and tags["weight_bytes_share"] == "fp16=1.000"


def test_export_check_fails_an_artifact_ort_cannot_load(tmp_path: Path) -> None:
    fp32 = _export(CastNet(), torch.randn(1, 12), tmp_path / "fp32.onnx")
    broken = tmp_path / "broken.onnx"  # the converter alone leaves the Casts at float32
    onnx.save_model(
        float16.convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(broken)
    )
    with pytest.raises(ExportClaimError, match=r"must load in ONNX Runtime.*float"):
        check_export(broken, ExportClaim(16, 24, 24), what="t")


def test_export_check_fails_an_artifact_that_cannot_run_the_example(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([3], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["input", "shape"], ["logits"])],
        "bad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        [shape],
    )
    path = tmp_path / "bad.onnx"
    onnx.save_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path
    )
    claim = ExportClaim(32, 0, 0)
    assert check_export(path, claim, what="t")["export_check"] == "ok"  # it loads
    with pytest.raises(ExportClaimError, match="must run on the example input"):
        check_export(path, claim, what="t", example=np.ones((1, 4), np.float64))


# 18.4: pruning scope and the per-layer cap.


def test_global_pruning_caps_each_layer_and_layer_scope_prunes_each_evenly() -> None:
    torch.manual_seed(0)
    weights = [torch.randn(64, 64) * 0.01, torch.randn(64, 64), torch.randn(8, 64) * 0.001]
    n = sum(w.numel() for w in weights)
    capped = magnitude_masks(weights, 0.5)
    per_layer = [1 - float(m.float().mean()) for m in capped]
    assert max(per_layer) <= layer_sparsity_cap(0.5) == 0.75
    assert sum(int((~m).sum()) for m in capped) == round(0.5 * n)  # the budget is kept
    even = magnitude_masks(weights, 0.5, scope="layer")
    assert [int((~m).sum()) for m in even] == [round(0.5 * w.numel()) for w in weights]
    with pytest.raises(PruningError, match="global or layer"):
        magnitude_masks(weights, 0.5, scope="model")


def test_pruning_scope_is_a_searchable_knob() -> None:
    assert parse_spec("experiment: x\ntask: digits\n").space.pruning_scope.choices == ["global"]  # type: ignore[union-attr]
    spec = parse_spec(
        "experiment: x\ntask: digits\nspace:\n  pruning_scope: {choices: [global, layer]}\n"
    )
    assert to_distributions(spec.space)["pruning_scope"].choices == ("global", "layer")  # type: ignore[attr-defined]
    with pytest.raises(Exception, match=r"space.pruning_scope"):
        parse_spec("experiment: x\ntask: digits\nspace:\n  pruning_scope: model\n")


# 18.5: sparsity over every weight of the artifact.


def test_sparsity_counts_attention_in_proj_and_gru_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = AttentionNet().eval()
    with torch.no_grad():  # half of the Linear weights zero, none of in_proj
        for layer in (model.embed, model.attn.out_proj, model.head):
            layer.weight[:, ::2] = 0.0
    path = _export(model, SEQ, tmp_path / "attn.onnx")
    linears = [model.embed, model.attn.out_proj, model.head]
    assert weight_sparsity(linears) == 0.5  # what the old count reported
    in_proj = model.attn.in_proj_weight.numel()
    total = in_proj + sum(m.weight.numel() for m in linears)
    assert artifact_sparsity(path) == pytest.approx(0.5 * (total - in_proj) / total)
    gru = GruNet().eval()
    with torch.no_grad():
        gru.gru.weight_hh_l0.zero_()
    path = _export(gru, SEQ, tmp_path / "gru.onnx")
    census = weight_census(onnx.load(str(path)))
    assert {w.op for w in census.weights} == {"GRU", "Gemm"}
    zeros = gru.gru.weight_hh_l0.numel()
    count = zeros + gru.gru.weight_ih_l0.numel() + gru.head.weight.numel()
    assert census.sparsity == pytest.approx(zeros / count)


# 12.3: the claim covers every weight; a knob that changes nothing is refused.


def test_int8_claim_fails_when_the_gru_stays_float_unless_opted_out(tmp_path: Path) -> None:
    fp32 = _export(GruNet(), SEQ, tmp_path / "fp32.onnx")
    int8 = tmp_path / "int8.onnx"
    calibration = np.random.default_rng(0).standard_normal((16, 6, 12)).astype(np.float32)
    quantize_int8(fp32, int8, calibration, what="t")
    claim = ExportClaim(bits=8, units=8, dense_units=8)
    with pytest.raises(ExportClaimError, match=r"gru\.weight_hh_l0 \(GRU, fp32"):
        check_export(int8, claim, what="t")
    kept = ExportClaim(bits=8, units=8, dense_units=8, keep_float=("gru",))
    tags = check_export(int8, kept, what="t", example=SEQ.numpy())
    share = dict(p.split("=") for p in tags["weight_bytes_share"].split(","))
    assert float(share["fp32"]) > 0.9 and "int8" in share  # the truth: mostly float
    with pytest.raises(ExportClaimError, match=r"keep_float.*grux"):
        check_export(int8, ExportClaim(8, 8, 8, keep_float=("grux",)), what="t")


def test_int4_and_simulated_claims_cover_the_gru(tmp_path: Path) -> None:
    fp32 = _export(GruNet(), SEQ, tmp_path / "fp32.onnx")
    int4 = tmp_path / "int4.onnx"
    quantize_int4(fp32, int4, what="t")
    with pytest.raises(ExportClaimError, match="4-bit artifact"):
        check_export(int4, ExportClaim(4, 8, 8), what="t")
    # A 3-bit claim on a file whose head is on the 3-bit grid but whose GRU is not.
    model = GruNet().eval()
    round_to_grid([model.head], weight_grid(3))
    simulated = _export(model, SEQ, tmp_path / "sim3.onnx")
    with pytest.raises(ExportClaimError, match="3-bit artifact stores every weight"):
        check_export(simulated, ExportClaim(3, 8, 8), what="t")
    assert check_export(simulated, ExportClaim(3, 8, 8, keep_float=("gru",)), what="t")


def test_keep_float_is_a_validated_list_of_module_names() -> None:
    spec = parse_spec(
        "experiment: x\ntask: digits\nquantization: {keep_float: [gru, encoder.layers.0]}\n"
    )
    assert spec.quantization.keep_float == ["gru", "encoder.layers.0"]
    assert parse_spec("experiment: x\ntask: digits\n").quantization.keep_float == []
    for bad in ('[""]', "[gru, gru]", "[' gru']", "[3]", "gru"):
        with pytest.raises(Exception, match=r"quantization\.keep_float"):
            parse_spec(f"experiment: x\ntask: digits\nquantization: {{keep_float: {bad}}}\n")


def test_attention_int8_covers_in_proj(tmp_path: Path) -> None:
    fp32 = _export(AttentionNet(), SEQ, tmp_path / "fp32.onnx")
    int8 = tmp_path / "int8.onnx"
    calibration = np.random.default_rng(0).standard_normal((16, 6, 12)).astype(np.float32)
    quantize_int8(fp32, int8, calibration, what="t")
    census = weight_census(onnx.load(str(int8)))
    assert any("in_proj" in w.name and w.precision == "int8" for w in census.weights)
    tags = check_export(int8, ExportClaim(8, 80, 80), what="t", example=SEQ.numpy())
    assert tags["weight_bytes_share"] == "int8=1.000"


def test_structured_pruning_that_can_remove_nothing_is_refused() -> None:
    with pytest.raises(PruningError, match="would change nothing"):
        prune_structured(GruNet(), SEQ, 0.5, what="gru")


class _OwnMatrix(nn.Module):
    """A matrix of the model's own (``x @ self.w``), then the output layer."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(72, 16))
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1) @ self.w)


def test_a_refusal_names_the_models_own_matrices() -> None:
    # Before, the message fell back to a generic list (GRU, LSTM, ...) for them.
    with pytest.raises(PruningError, match=r"other layers \(w \(a Parameter of _OwnMatrix\)\)"):
        prune_structured(_OwnMatrix(), SEQ, 0.5, what="own")


# End to end: run_trial on a GRU task and on the tiny CNN with the layer scope.


class GruTask(Task):
    """Which of 8 sequence positions holds the largest first feature: learnable in seconds."""

    name = "gru-argmax"
    baseline_epochs = 2
    baseline_lr = 3e-3
    baseline_batch_size = 32

    def build_model(self) -> nn.Module:
        return nn.Sequential(_GruBody(), nn.Linear(32, 8))

    def _data(self, seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 8, 12, generator=g)
        return x, x[:, :, 0].argmax(1)

    def train_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._data(0, 512)

    def val_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._data(1, 128)


class _GruBody(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(12, 32, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0][:, -1]


def test_gru_trial_is_honest_end_to_end(
    shared_cache: Path, make_settings: Callable[..., TrialSettings], tmp_path: Path
) -> None:
    task = GruTask()
    sparse = TrialParams(lr=1e-3, batch_size=64, sparsity=0.5, bits=8)
    fmt = "u8s8-per-channel"  # fixed: auto would time every format first
    plain = dataclasses.replace(
        make_settings(shared_cache, tmp_path / "a", epochs=1), int8_format=fmt
    )
    with pytest.raises(ExportClaimError, match=r"0\.gru\.weight_hh_l0 \(GRU, fp32"):
        run_trial(task, sparse, plain)
    settings = dataclasses.replace(plain, work_dir=tmp_path / "b", keep_float=("0.gru",))
    result = run_trial(task, sparse, settings)
    share = dict(p.split("=") for p in result.tags["weight_bytes_share"].split(","))
    assert float(share["fp32"]) > 0.8 and float(share["int8"]) > 0
    # Only the 8 x 32 head was pruned: half of it, a small share of every weight in the file.
    head, gru = 8 * 32, 3 * 32 * (12 + 32)
    assert result.metrics["sparsity_achieved"] == pytest.approx(0.5 * head / (head + gru), abs=0.01)
    assert result.tags["pruning_effect"].startswith("partial: sparsity 0.5 requested")
    structured = TrialParams(lr=1e-3, batch_size=64, sparsity=0.5, bits=32, pruning="structured")
    with pytest.raises(PruningError, match="would change nothing"):
        run_trial(task, structured, settings)


def test_layer_scope_trial_prunes_every_layer_to_the_ratio(
    tiny_task: Task, shared_cache: Path, make_settings: Callable[..., TrialSettings], tmp_path: Path
) -> None:
    params = TrialParams(lr=1e-3, batch_size=32, sparsity=0.5, bits=32, pruning_scope="layer")
    result = run_trial(tiny_task, params, make_settings(shared_cache, tmp_path, epochs=1))
    assert result.tags["pruning_scope"] == "layer"
    per_layer = dict(p.split("=") for p in result.tags["layer_sparsity"].split(","))
    assert list(per_layer) == ["0", "3", "6", "8"]  # module names of the tiny CNN
    assert all(float(v) == pytest.approx(0.5, abs=0.01) for v in per_layer.values())
    assert result.metrics["sparsity_achieved"] == pytest.approx(0.5, abs=0.01)
    assert "pruning_effect" not in result.tags
    assert TrialParams.from_dict({**params.to_dict()}).pruning_scope == "layer"
    assert TrialParams.from_dict({"lr": 1e-3, "batch_size": 8, "sparsity": 0, "bits": 8}) == (
        TrialParams(lr=1e-3, batch_size=8, sparsity=0, bits=8, pruning_scope="global")
    )


@pytest.mark.parametrize("bits", [2, 3, 5, 6, 7])
def test_a_float_gru_fails_every_simulated_width_claim(bits: int, tmp_path: Path) -> None:
    # Before, the check counted levels: a GRU row of 12 inputs holds at most 12 distinct
    # values, so a 6- or 7-bit claim (63 and 127 levels) passed with the GRU left fp32.
    model = GruNet()
    round_to_grid([model.head], weight_grid(bits))
    path = tmp_path / "gru.onnx"
    export_onnx(model, SEQ, path, what="t")
    with pytest.raises(
        ExportClaimError, match=r"gru\.weight_ih_l0 \(GRU, fp32.*keep_float: \[gru\]"
    ):
        check_export(path, ExportClaim(bits, 8, 8), what="t")
    kept = ExportClaim(bits, 8, 8, keep_float=("gru",))
    assert check_export(path, kept, what="t")["export_check"] == "ok"


def test_keep_float_never_exempts_a_layer_the_trial_rounded_itself(tmp_path: Path) -> None:
    # keep_float lets weights the trial cannot round stay float (an own matrix read by slices);
    # a Linear the trial rounds itself is still held to the grid, whatever keep_float names.
    model = nn.Sequential(nn.Flatten(), nn.Linear(72, 16), nn.ReLU(), nn.Linear(16, 4))
    round_to_grid([model[3]], weight_grid(3))  # layer 1 left float: a rounding slimtune missed
    path = tmp_path / "mlp.onnx"
    export_onnx(model, SEQ, path, what="t")
    kept = ExportClaim(3, 20, 20, keep_float=("1",))
    assert check_export(path, kept, what="t")["export_check"] == "ok"
    rounded = dataclasses.replace(kept, rounded=("1.weight", "3.weight"))
    with pytest.raises(ExportClaimError, match=r"weight 1\.weight has \d+"):
        check_export(path, rounded, what="t")
