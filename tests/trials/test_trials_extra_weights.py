"""Extra weights at simulated widths: a model's own matrices (``x @ self.w`` instead of an
nn.Linear) and ConvTranspose kernels, found with their output axis, fake-quantized on the grid
and checked in the artifact; the own matrices that cannot be mapped are refused with a fix that
names them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from searchspace import TrialParams
from trials import (
    ExportClaim,
    ExportClaimError,
    RungReport,
    Task,
    TrialSettings,
    check_export,
    check_schemes,
    run_trial,
)
from trials._artifact_weights import weight_census
from trials._compress import round_to_grid
from trials._export import export_onnx
from trials._extra_weights import ExtraWeight, einsum_axes, extra_weights, find_extra_weights
from trials._quantize import weight_grid

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w.t()


class _Many(nn.Module):
    """Every way of multiplying with a parameter that the finder reads, and some it must not."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(4, 6))  # x @ a: its columns are the outputs
        self.b = nn.Parameter(torch.randn(6, 6))  # F.linear(h, b): its rows
        self.c = nn.Parameter(torch.randn(6, 6))  # torch.addmm(bias, h, c): its columns
        self.e = nn.Parameter(torch.randn(6, 6))  # torch.einsum("bd,kd->bk", h, e): its rows
        self.block = _Block()  # h @ w.t(): the rows of block.w
        self.sliced = nn.Parameter(torch.randn(6, 8))  # h @ sliced[:, :4]: no output unit map
        self.both = nn.Parameter(torch.randn(6, 6))  # read as it is and transposed
        self.scale = nn.Parameter(torch.ones(6))  # 1-D: no matrix
        self.table = nn.Parameter(torch.randn(3, 6))  # 2-D but added, not multiplied
        self.head = nn.Linear(6, 2)  # a layer: quantized as one already

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x @ self.a
        h = F.linear(h, self.b)
        h = torch.addmm(torch.zeros(6), h, self.c)
        h = torch.einsum("bd,kd->bk", h, self.e)
        h = self.block(h) * self.scale + self.table.sum(0)
        h = h + (h @ self.sliced[:, :4]).sum(1, keepdim=True)
        h = h @ self.both + h @ self.both.t()
        return self.head(h)


def test_the_finder_reads_each_matrix_with_its_output_axis() -> None:
    model = _Many()
    model.train()
    found = find_extra_weights(model, torch.randn(2, 4))
    assert found == [
        ExtraWeight("a", 1),
        ExtraWeight("b", 0),
        ExtraWeight("c", 1),
        ExtraWeight("e", 0),
        ExtraWeight("block.w", 0),
    ]
    assert model.training  # the forward ran in eval mode and the mode was put back


@pytest.mark.parametrize(
    ("equation", "axes"),
    [
        ("btd,dk->btk", [None, 1]),  # the matrix's columns are the output units
        ("bd,kd->bk", [0, 0]),  # its rows (a 2-D activation reads the same; only
        ("bi,ij", [0, 1]),  # parameters count) and an implicit output: the indices seen once
        ("...d,dk->...k", [None, 1]),
        ("ij,jk->ik", [0, 1]),  # either side may be the matrix
        ("bi,bj->bij", [None, None]),  # an outer product contracts nothing
        ("ij,ij->", [None, None]),  # contracted on both indices
        ("ii->i", [None]),
    ],
)
def test_an_einsum_operand_is_a_matrix_when_it_keeps_one_index(
    equation: str, axes: list[int | None]
) -> None:
    assert einsum_axes(equation, len(axes)) == axes


def test_the_census_counts_an_einsums_weight(tmp_path: Path) -> None:
    # Before, a weight read by an Einsum was in no count: an int8 claim passed with it fp32.
    model = _EinsumNet()
    path = tmp_path / "e.onnx"
    export_onnx(model, torch.randn(1, 8, 12), path, what="t")
    assert {w.name for w in weight_census(onnx.load(str(path))).weights} == {"w", "head.weight"}


def test_only_simulated_widths_round_and_keep_float_opts_out() -> None:
    model, example = _Many(), torch.randn(2, 4)
    assert not extra_weights(model, example, 8).quantizes  # ONNX Runtime quantizes these itself
    assert not extra_weights(model, example, 4).quantizes
    kept = extra_weights(model, example, 3, keep_float=("block", "a"))
    assert [m.name for m in kept.weights] == ["b", "c", "e"]
    assert kept.tag() == {"extra_weights": "b,c,e: fake-quantized on the 3-bit grid"}


def test_baking_puts_each_output_unit_on_the_grid() -> None:
    model = _Many()
    matrices = extra_weights(model, torch.randn(2, 4), 3)
    before = model.sliced.detach().clone()
    matrices.bake(model)
    for name, axis in (("a", 1), ("b", 0), ("c", 1), ("e", 0), ("block.w", 0)):
        units = model.get_parameter(name).detach()
        units = units if axis == 0 else units.t()
        assert max(len(torch.unique(row)) for row in units) <= 7, name
        # Per unit, not per tensor: the other axis has more than 7 levels.
        other = units.t()
        assert max(len(torch.unique(row)) for row in other) > 7 or units.shape[0] < 8
    assert torch.equal(model.sliced.detach(), before)
    # 3-bit bytes plus a scale per output unit, for the four matrices; every other param fp32.
    own = (model.a, model.b, model.c, model.e, model.block.w)
    expected = sum((p.numel() * 3 + 7) // 8 for p in own)
    assert matrices.packed_bytes(model) == expected + 4 * 6 * len(own)


def test_attached_matrices_train_on_the_grid_and_bake_to_what_trained() -> None:
    model, x = _Many(), torch.randn(5, 4)
    matrices = extra_weights(model, x, 3)
    matrices.attach(model)
    trained = model(x)
    trained.sum().backward()
    original = dict(model.named_parameters())["block.parametrizations.w.original"]
    assert original.grad is not None and original.grad.abs().sum() > 0  # straight through
    assert max(len(torch.unique(col)) for col in model.a.t()) <= 7  # the forward sees the grid
    matrices.bake(model)
    assert dict(model.named_parameters()).keys() >= {"a", "b", "c", "e", "block.w"}
    assert torch.allclose(model(x), trained, atol=1e-6)


class _OwnMatrixNet(nn.Module):
    def __init__(self, sliced: bool = False) -> None:
        super().__init__()
        self.sliced = sliced
        self.w = nn.Parameter(torch.randn(96, 32) * 0.1)
        self.head = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        h = self._halves(x) if self.sliced else x @ self.w
        return self.head(torch.relu(h))

    def _halves(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ w`` read as two slices of ``w``: no output unit to map."""
        return torch.cat([x @ self.w[:, :16], x @ self.w[:, 16:]], 1)


class _EinsumNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(12, 32) * 0.1)
        self.head = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(torch.einsum("btd,dk->bk", x, self.w)))


class _TokenMixer(nn.Module):
    """MLP-Mixer's token mixing as a matrix of its own on the left: ``mix @ x`` over 8
    positions, then a Linear over the features."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Parameter(torch.eye(8) + 0.1 * torch.randn(8, 8))
        self.head = nn.Linear(8 * 12, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mix @ x).flatten(1))


class OwnMatrixTask(Task):
    """Which of 8 positions holds the largest first feature, through a matrix of the model's own."""

    name = "own-matrix"
    baseline_epochs = 1
    baseline_lr = 3e-3
    baseline_batch_size = 32
    sliced = False

    def build_model(self) -> nn.Module:
        return _OwnMatrixNet(self.sliced)

    def _data(self, seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 8, 12, generator=g)
        return x, x[:, :, 0].argmax(1)

    def train_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._data(0, 256)

    def val_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._data(1, 64)


class EinsumTask(OwnMatrixTask):
    name = "own-matrix-einsum"

    def build_model(self) -> nn.Module:
        return _EinsumNet()


class _Upsampler(nn.Module):
    """A Conv, a ConvTranspose (weight: in, out, kernel) with a kernel of 2, a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 16, 3, padding=1)
        self.up = nn.ConvTranspose1d(16, 16, 2, stride=2)
        self.head = nn.Linear(16 * 24, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.up(torch.relu(self.conv(x)))).flatten(1))  # 8 channels


class UpsamplerTask(OwnMatrixTask):
    name = "upsampler"

    def build_model(self) -> nn.Module:
        return _Upsampler()


class TokenMixerTask(OwnMatrixTask):
    name = "token-mixer"

    def build_model(self) -> nn.Module:
        return _TokenMixer()


class SlicedTask(OwnMatrixTask):
    name = "own-matrix-sliced"
    sliced = True


def _w_levels(path: Path) -> int:
    """The most levels a column of the file's ``w`` (a MatMul's right operand) holds."""
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    return max(len(np.unique(col)) for col in inits["w"].T)


def test_a_simulated_width_trial_fake_quantizes_the_models_own_matrix(
    make_settings: Callable[..., TrialSettings], tmp_path: Path
) -> None:
    # Before, the export check refused it as a slimtune bug (MatMul has 96 levels).
    params = TrialParams(lr=1e-3, batch_size=64, sparsity=0.5, bits=3)
    settings = make_settings(tmp_path / "cache", tmp_path / "w", epochs=1)
    reports: list[RungReport] = []
    result = run_trial(OwnMatrixTask(), params, settings, rungs=reports.append)
    assert result.tags["export_check"] == "ok"
    assert result.tags["extra_weights"] == "w: fake-quantized on the 3-bit grid"
    assert _w_levels(settings.work_dir / "model.onnx") <= 7
    # Packed: w at 3 bits with 32 scales, the head at 3 bits with 8, the biases fp32.
    w, head = (96 * 32 * 3 + 7) // 8 + 4 * 32, (32 * 8 * 3 + 7) // 8 + 4 * 8
    assert result.metrics["size_packed_bytes"] == w + head + 4 * 8
    # The early artifact was rounded the same way (else its check would have failed), and
    # the last rung's PyTorch accuracy is the final model's.
    assert [r.epoch for r in reports] == [0, 1]
    assert reports[-1].metrics["torch_accuracy"] == pytest.approx(
        result.metrics["torch_accuracy"], abs=1e-9
    )


def test_an_einsum_matrix_is_on_the_grid_at_3_bits_and_named_at_8(
    make_settings: Callable[..., TrialSettings], tmp_path: Path
) -> None:
    params = TrialParams(lr=1e-3, batch_size=64, sparsity=0.0, bits=3)
    settings = make_settings(tmp_path / "cache", tmp_path / "w3", epochs=1)
    result = run_trial(EinsumTask(), params, settings)
    assert result.tags["extra_weights"] == "w: fake-quantized on the 3-bit grid"
    # ONNX Runtime's int8 quantizer leaves an Einsum float: the check says so and names it.
    int8 = dataclasses.replace(settings, work_dir=tmp_path / "w8", int8_format="u8s8-per-channel")
    with pytest.raises(ExportClaimError, match=r"w \(Einsum, fp32.*keep_float: \[w\]"):
        run_trial(EinsumTask(), dataclasses.replace(params, bits=8), int8)


def test_a_conv_transpose_is_quantized_at_a_simulated_width_and_at_8_bits(
    make_settings: Callable[..., TrialSettings], tmp_path: Path
) -> None:
    # Before, 3 bits passed with its kernel left fp32 (the check read kernel rows of 2 values),
    # and at 8 bits ONNX Runtime was told to leave it float (the check then refused the trial).
    params = TrialParams(lr=1e-3, batch_size=64, sparsity=0.5, bits=3)
    settings = make_settings(tmp_path / "cache", tmp_path / "w3", epochs=1)
    result = run_trial(UpsamplerTask(), params, settings)
    assert result.tags["extra_weights"] == "up.weight: fake-quantized on the 3-bit grid"
    inits = {
        t.name: numpy_helper.to_array(t)
        for t in onnx.load(str(settings.work_dir / "model.onnx")).graph.initializer
    }
    per_output_channel = np.moveaxis(inits["up.weight"], 1, 0).reshape(16, -1)
    assert max(len(np.unique(unit)) for unit in per_output_channel) <= 7
    for fmt in ("u8s8-per-channel", "s8s8-per-tensor"):
        int8 = dataclasses.replace(settings, work_dir=tmp_path / fmt, int8_format=fmt)
        result = run_trial(UpsamplerTask(), dataclasses.replace(params, bits=8), int8)
        assert result.tags["weight_bytes_share"] == "int8=1.000", fmt


def test_a_token_mixing_matrix_on_the_left_is_on_the_grid_per_row(
    make_settings: Callable[..., TrialSettings], tmp_path: Path
) -> None:
    assert find_extra_weights(_TokenMixer(), torch.randn(1, 8, 12)) == [ExtraWeight("mix", 0)]
    params = TrialParams(lr=1e-3, batch_size=64, sparsity=0.0, bits=3)
    settings = make_settings(tmp_path / "cache", tmp_path / "w3", epochs=1)
    result = run_trial(TokenMixerTask(), params, settings)
    assert result.tags["extra_weights"] == "mix: fake-quantized on the 3-bit grid"
    graph = onnx.load(str(settings.work_dir / "model.onnx")).graph
    mix = next(numpy_helper.to_array(t) for t in graph.initializer if t.name == "mix")
    assert max(len(np.unique(row)) for row in mix) <= 7


def test_a_simulated_width_counts_levels_per_output_unit_not_per_kernel_row(
    tmp_path: Path,
) -> None:
    # Before, a kernel row (2 values here) counted as a row: every weight with a kernel of at
    # most 2**bits - 1 passed, so a 3-bit claim passed with the ConvTranspose left fp32.
    model = _Upsampler()
    round_to_grid([model.conv, model.head], weight_grid(3))
    path = tmp_path / "up.onnx"
    export_onnx(model, torch.randn(1, 8, 12), path, what="t")
    census = {w.name: w for w in weight_census(onnx.load(str(path))).weights}
    assert not census["up.weight"].on_grid(3)
    assert census["conv.weight"].on_grid(3)  # per output channel (axis 0)
    claim = ExportClaim(3, units=40, dense_units=40)
    with pytest.raises(ExportClaimError, match=r"up\.weight \(ConvTranspose.*keep_float: \[up\]"):
        check_export(path, claim, what="t")
    # On the grid per output channel, its axis 1, it passes.
    with torch.no_grad():
        up = model.up.weight
        up.copy_(weight_grid(3).fake_quantize(up.transpose(0, 1)).transpose(0, 1))
    export_onnx(model, torch.randn(1, 8, 12), path, what="t")
    assert check_export(path, claim, what="t")["export_check"] == "ok"


def test_an_unmappable_matrix_is_refused_with_a_fix_that_names_it(
    make_settings: Callable[..., TrialSettings], tmp_path: Path
) -> None:
    params = TrialParams(lr=1e-3, batch_size=64, sparsity=0.0, bits=3)
    settings = make_settings(tmp_path / "cache", tmp_path / "w", epochs=1)
    with pytest.raises(ExportClaimError, match=r"MatMul weight \S+ has \d+\).*keep_float: \["):
        run_trial(SlicedTask(), params, settings)


def test_the_scheme_check_passes_a_model_with_its_own_matrix(tmp_path: Path) -> None:
    checks = check_schemes(
        OwnMatrixTask(), [32, 8, 4, 3, 2], ["unstructured"], sparsity=0.5, work_dir=tmp_path
    )
    assert sorted(c.bits for c in checks) == [2, 3, 4, 8, 32]
