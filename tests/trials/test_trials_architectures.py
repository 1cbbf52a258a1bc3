"""Residual, depthwise and recurrent models (issue 12 item 4): a ResNet-style and a
MobileNetV2-style network take every knob (bits 32/16/8/4/3, unstructured and structured
pruning; distillation in a trial), each artifact passing the export check, with BatchNorm
folded into the convolutions; a GRU / LSTM classifier's knobs that cannot work are refused
before any search, naming the layer, the knob and the fix."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from searchspace import TrialParams
from trials import SchemeRefused, Task, TrialSettings, check_schemes, run_trial
from trials._export import export_onnx
from trials._plain import plain_weights

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")

HERE = Path(__file__).resolve().parent
BITS = (32, 16, 8, 4, 3)
SCHEMES = ("unstructured", "structured")


def _task(kind: str) -> Task:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(HERE))
        module = importlib.import_module("trials_tiny_arch")
    task: Task = getattr(module, kind)()
    return task


@pytest.mark.parametrize("kind", ["TinyResNet", "TinyMobileNet", "TinyWeightNorm"])
def test_every_bit_width_and_pruning_scheme_exports_and_passes_the_check(kind: str) -> None:
    checks = check_schemes(_task(kind), BITS, SCHEMES, sparsity=0.5)
    assert sorted((c.bits, c.pruning) for c in checks) == sorted(
        (b, s) for b in BITS for s in SCHEMES
    )


@pytest.mark.parametrize("kind", ["TinyResNet", "TinyMobileNet"])
def test_batchnorm_is_folded_into_the_convolutions(kind: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    task = _task(kind)
    model = task.build_model()
    for m in model.modules():  # statistics far from the identity, so folding shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 2.0)
            nn.init.uniform_(m.bias, -1, 1)
    model.eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, task.example_input().float(), path, what="test")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    x, _ = task.val_data()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x[:32].numpy()})[0]
    with torch.no_grad():
        want = model(x[:32]).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("kind", "pruning", "bits", "distill"),
    [
        ("TinyResNet", "structured", 8, 0.5),
        ("TinyMobileNet", "structured", 4, 0.0),
        ("TinyMobileNet", "unstructured", 3, 0.0),
    ],
)
def test_trials_on_residual_and_depthwise_models(
    kind: str,
    pruning: str,
    bits: int,
    distill: float,
    shared_cache: Path,
    make_settings: Callable[..., TrialSettings],
    tmp_path: Path,
) -> None:
    settings = dataclasses.replace(
        make_settings(shared_cache, tmp_path, epochs=1), int8_format="u8s8-per-channel"
    )
    params = TrialParams(
        lr=1e-3, batch_size=64, sparsity=0.5, bits=bits, pruning=pruning, distill_weight=distill
    )
    result = run_trial(_task(kind), params, settings)
    assert result.tags["export_check"] == "ok"
    assert abs(result.metrics["accuracy"] - result.metrics["torch_accuracy"]) <= 0.06
    ops = {n.op_type for n in onnx.load(str(result.onnx_path)).graph.node}
    assert "BatchNormalization" not in ops
    if pruning == "structured":
        assert result.metrics["output_units"] < result.metrics["dense_output_units"]
    if distill:
        assert result.tags["distill"].startswith("weight=0.5")


@pytest.mark.parametrize(("kind", "layer"), [("TinyGRU", "GRU"), ("TinyLSTM", "LSTM")])
def test_recurrent_knobs_that_cannot_work_are_refused_before_a_search(
    kind: str, layer: str
) -> None:
    with pytest.raises(SchemeRefused) as refused:
        check_schemes(_task(kind), (32, 8), SCHEMES, sparsity=0.5)
    text = str(refused.value)
    # int8 leaves the recurrent weights fp32: the layer, the knob and the fix are named.
    assert "space.bits=8 with space.pruning=unstructured" in text
    assert "rnn.weight_hh_l0" in text and "keep_float: [rnn]" in text
    # structured pruning has nothing to remove but the output layer.
    assert "space.bits=32 with space.pruning=structured" in text
    assert f"rnn ({layer})" in text and "search pruning: unstructured" in text
    # fp32 unstructured works: it is not refused.
    assert "space.bits=32 with space.pruning=unstructured" not in text


def test_a_recurrent_layer_opted_out_by_name_takes_the_quantized_widths() -> None:
    checks = check_schemes(
        _task("TinyGRU"), (8, 4, 3), ("unstructured",), sparsity=0.5, keep_float=("rnn",)
    )
    assert sorted(c.bits for c in checks) == [3, 4, 8]


def test_reparametrized_weights_are_made_plain_with_the_same_values() -> None:
    """Weight norm and spectral norm compute a layer's weight at every forward; slimtune stores
    the weight they give as a plain parameter before it compresses (before, the scheme check
    refused every pair but fp32 unstructured: torch-pruning found ``weight`` taken, ORT's int8
    quantizer found no weight initializer, the int4 export left float weights)."""
    torch.manual_seed(0)
    model = _task("TinyWeightNorm").build_model().eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        before = model(x)
    made = plain_weights(model)
    assert made == ["0.weight", "2.weight", "5.weight"]
    assert plain_weights(model) == []  # nothing left to make plain
    names = {name for name, _ in model.named_parameters()}
    assert names == {f"{i}.{p}" for i in (0, 2, 5, 7) for p in ("weight", "bias")}
    assert not model[2]._forward_pre_hooks and not model[5]._forward_pre_hooks
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), before.numpy(), rtol=1e-6, atol=1e-6)


def test_a_trial_of_a_weight_norm_model_prunes_and_quantizes_it(
    tmp_path: Path, make_settings: Callable[..., TrialSettings]
) -> None:
    settings = dataclasses.replace(
        make_settings(tmp_path / "cache", tmp_path / "work", epochs=1),
        int8_format="u8s8-per-channel-reduce-range",
    )
    params = TrialParams(lr=1e-3, batch_size=32, sparsity=0.5, bits=8, pruning="structured")
    result = run_trial(_task("TinyWeightNorm"), params, settings)
    assert result.metrics["output_units"] < result.metrics["dense_output_units"]
    assert result.tags["export_check"] == "ok" and result.metrics["accuracy"] > 0
