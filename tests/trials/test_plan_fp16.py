"""fp16 as a per-layer format of a mixed plan: the layer's weight is stored as float16 behind a
Cast in the real artifact, next to int8, int4 and fp32 layers; the check reads it from the
file; the size prediction counts it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from trials import CompressionPlan, ExportClaimError, LayerSetting, check_plan_export
from trials._artifact_weights import weight_census
from trials._attention import rewrite_multihead_attention
from trials._compress import prunable_layers
from trials._plan_export import export_mixed
from trials._plan_widths import LayerShape
from trials._quantize import DEFAULT_INT8_FORMAT
from trials._trial_steps import layer_names

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from trials_tiny_attention import TinyLinearAttention  # noqa: E402
from trials_tiny_task import TinyDigits  # noqa: E402

sys.path.remove(str(HERE))


def _model(kind: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    task = TinyDigits() if kind == "cnn" else TinyLinearAttention()
    model = task.build_model().eval()
    rewrite_multihead_attention(model)
    x = task.train_data()[0][:32].float()
    return model, x[:1], x


@pytest.mark.parametrize("kind", ["cnn", "attention"])
def test_an_fp16_layer_is_stored_as_fp16_next_to_the_other_formats(
    kind: str, tmp_path: Path
) -> None:
    model, example, batch = _model(kind)
    names = layer_names(model, prunable_layers(model))
    cycle = ["fp16", "int8", "fp32", "int4"]
    formats = {n: cycle[i % 4] for i, n in enumerate(names)}
    plan = CompressionPlan(tuple((n, LayerSetting(f)) for n, f in formats.items()), kind="mixed")
    path = tmp_path / "model.onnx"
    tags = export_mixed(
        model, example, path, plan, DEFAULT_INT8_FORMAT, batch.numpy(), scheme="ptq", what="t"
    )
    assert "fp16_compute" in tags
    tags = check_plan_export(path, plan, int8_format=DEFAULT_INT8_FORMAT.name, what="t")
    stored = dict(p.split("=") for p in tags["export_check_summary"][5:].split(","))
    assert stored == formats
    # The file runs in ONNX Runtime and an fp16 layer changes the output by rounding only.
    only_half = CompressionPlan(
        tuple((n, LayerSetting("fp16" if i == 0 else "fp32")) for i, n in enumerate(names)),
        kind="mixed",
    )
    export_mixed(
        model, example, path, only_half, DEFAULT_INT8_FORMAT, batch.numpy(), scheme="ptq", what="t"
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0]
    with torch.no_grad():
        want = model(batch).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-3)
    # The size prediction counts the fp16 layer at two bytes a weight.
    census = {w.name: w for w in weight_census(onnx.load(str(path))).weights}
    first = next(layer for layer in prunable_layers(model))
    weight = census[f"{names[0]}.weight"]
    assert weight.precision == "fp16"
    assert weight.nbytes == first.weight.numel() * 2
    dense = LayerShape.of(names[0], first)
    assert dense.nbytes("fp16") - dense.nbytes("fp32") == -2 * first.weight.numel() + 60


def test_a_layer_claimed_fp16_but_stored_fp32_fails_the_check(tmp_path: Path) -> None:
    model, example, batch = _model("cnn")
    names = layer_names(model, prunable_layers(model))
    fp32 = CompressionPlan(tuple((n, LayerSetting("fp32")) for n in names), kind="mixed")
    path = tmp_path / "model.onnx"
    export_mixed(
        model, example, path, fp32, DEFAULT_INT8_FORMAT, batch.numpy(), scheme="ptq", what="t"
    )
    claimed = CompressionPlan(
        tuple((n, LayerSetting("fp16" if i == 1 else "fp32")) for i, n in enumerate(names)),
        kind="mixed",
    )
    with pytest.raises(ExportClaimError, match=f"layer '{names[1]}' is stored as fp16"):
        check_plan_export(path, claimed, int8_format=None, what="t")
