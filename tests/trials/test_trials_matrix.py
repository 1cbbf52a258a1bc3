"""Every (pruning scheme, bit-width) end to end on the tiny task, and the export check.

Each combination runs at sparsity 0.5 (structured: half of each layer's channels removed) with
2 epochs of fine-tuning. Latency *ordering* is not asserted here: the tiny model runs in ~20 us
in ONNX Runtime, all overhead (stack-facts); the mnist1d figures in the README are where
compression shows in latency.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from searchspace import SlimtuneError, TrialParams
from trials import (
    ExportClaim,
    ExportClaimError,
    Task,
    TrialResult,
    TrialSettings,
    check_export,
    onnx_accuracy,
    run_baseline,
    run_trial,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")

SCHEMES = ("unstructured", "structured")
BITS = (32, 16, 8, 4)
QDQ = {"QuantizeLinear", "DequantizeLinear"}

# ORT accuracy vs the PyTorch model it was exported from, on 360 validation images:
# fp32 computes the same arithmetic up to float rounding (1 image may flip); int4 stores the
# fake-quantized weights exactly, but MatMulNBits (accuracy_level 4) quantizes the Linear
# layers' activations to int8 per block (3 images); fp16 rounds every weight to 11 significant
# bits (3 images); int8 also quantizes every activation (5 points).
TOLERANCE = {32: 1.5 / 360, 4: 3.5 / 360, 16: 3.5 / 360, 8: 0.05}


@pytest.fixture(scope="module")
def results(
    tiny_task: Task,
    shared_cache: Path,
    make_settings: Callable[..., TrialSettings],
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str, int], TrialResult]:
    """Runs each combination once, on first use; ("dense", 32) is the dense baseline."""
    done: dict[tuple[str, int], TrialResult] = {}

    def get(scheme: str, bits: int) -> TrialResult:
        if (scheme, bits) not in done:
            settings = make_settings(shared_cache, tmp_path_factory.mktemp(f"{scheme}{bits}"))
            if scheme == "dense":
                done[scheme, bits] = run_baseline(tiny_task, settings)
            else:
                params = TrialParams(
                    lr=1e-3, batch_size=32, sparsity=0.5, bits=bits, pruning=scheme
                )
                done[scheme, bits] = run_trial(tiny_task, params, settings)
        return done[scheme, bits]

    return get


def _model(result: TrialResult) -> onnx.ModelProto:
    return onnx.load(str(result.onnx_path))


def _ops(result: TrialResult) -> set[str]:
    return {n.op_type for n in _model(result).graph.node}


def _init_types(result: TrialResult) -> set[int]:
    return {t.data_type for t in _model(result).graph.initializer if len(t.dims) >= 2}


def _conv_channels(result: TrialResult) -> list[int]:
    model = _model(result)
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    channels = []
    for node in model.graph.node:
        if node.op_type == "Conv":
            name = node.input[1]
            while name not in inits:  # through DequantizeLinear at 8 bits
                name = producers[name].input[0]
            channels.append(int(inits[name].dims[0]))
    return channels


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_combination_end_to_end(
    scheme: str, bits: int, results: Callable[[str, int], TrialResult], tiny_task: Task
) -> None:
    result = results(scheme, bits)
    m, tags = result.metrics, result.tags
    # It loads in ONNX Runtime, takes fp32 input and returns fp32 logits of any batch size.
    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"
    x, _ = tiny_task.val_data()
    out = session.run(None, {session.get_inputs()[0].name: x[:3].numpy()})[0]
    assert out.shape == (3, 10) and out.dtype == np.float32
    # ORT's accuracy is the logged one and matches PyTorch's within the stated tolerance.
    assert onnx_accuracy(result.onnx_path, tiny_task) == pytest.approx(m["accuracy"])
    assert abs(m["accuracy"] - m["torch_accuracy"]) <= TOLERANCE[bits]
    assert m["accuracy"] > 0.6
    assert m["size_bytes"] > 0 and m["size_gzip_bytes"] > 0 and m["latency_ms"] > 0
    # The claim is checked and logged.
    assert tags["export_check"] == "ok" and f"bits={bits}" in tags["export_check_summary"]
    assert tags["pruning"] == scheme
    assert tags["quant_scheme"] == ("qat" if bits <= 8 else "none")  # 16/32 ignore the scheme
    # Op and initializer types match the bit-width's claim.
    ops, types = _ops(result), _init_types(result)
    if bits == 8:
        assert ops >= QDQ and types & {onnx.TensorProto.INT8}
        assert tags["artifact"] == "real" and tags["format"].startswith("int8-qdq")
    elif bits == 16:
        assert not ops & QDQ and types == {onnx.TensorProto.FLOAT16} and "Cast" in ops
        assert tags["artifact"] == "real" and tags["format"] == "fp16"
        assert "fp32" in tags["fp16_compute"]
    elif bits == 32:
        assert not ops & QDQ and types == {onnx.TensorProto.FLOAT}
        assert (tags["artifact"], tags["format"]) == ("real", "fp32")
    else:  # real int4: MatMulNBits for the Linear layers, int4 DequantizeLinear for the Convs
        assert {"MatMulNBits", "DequantizeLinear"} <= ops and "QuantizeLinear" not in ops
        # 2-D initializers: int4 Conv kernels, MatMulNBits' packed codes (uint8) and scales.
        T = onnx.TensorProto
        assert types == {T.INT4, T.UINT8, T.FLOAT}
        assert (tags["artifact"], tags["format"]) == ("real", "int4-matmulnbits-dqconv")
        assert tags["int4_layers"] == "matmulnbits=2,dequantize=2"
        assert "fp32" in tags["int4_compute"]
    # Pruning shows where it should.
    dense = results("dense", 32)
    if scheme == "structured":
        assert m["total_params"] < 0.5 * dense.metrics["total_params"]
        assert m["channel_sparsity_achieved"] > 0.4
        assert sum(_conv_channels(result)) < sum(_conv_channels(dense))
        # Widths rounded to multiples of 8 (pruning.round_to): the first conv keeps its 8.
        assert tags["pruning_widths"] == "8,8,64,10"
    else:
        assert m["total_params"] == dense.metrics["total_params"]
        assert m["sparsity_achieved"] >= 0.5 - 1e-6
        assert _conv_channels(result) == _conv_channels(dense)
        history = [tuple(map(float, h.split(":"))) for h in tags["pruning_history"].split(",")]
        assert history[0] == (0.0, 0.0) and history[-1][1] == 0.5
        assert all(a[1] <= b[1] for a, b in itertools.pairwise(history))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_sizes_are_ordered(scheme: str, results: Callable[[str, int], TrialResult]) -> None:
    size = {bits: results(scheme, bits).metrics["size_bytes"] for bits in BITS}
    # The graph's fixed overhead (~4 kB) is a larger share of the small structured files.
    assert size[8] < 0.5 * size[32]
    assert 0.45 < size[16] / size[32] < 0.66  # fp16: about half
    # Real int4 halves the int8 file again, up to the scales and the graph's fixed overhead.
    assert size[4] < 0.65 * size[8]
    packed = results(scheme, 4).metrics["size_packed_bytes"]
    assert packed <= size[4]


@pytest.mark.parametrize("bits", BITS)
def test_structured_is_smaller_than_unstructured(
    bits: int, results: Callable[[str, int], TrialResult]
) -> None:
    dense = results("dense", 32).metrics
    structured = results("structured", bits).metrics
    unstructured = results("unstructured", bits).metrics
    assert structured["size_bytes"] < 0.5 * unstructured["size_bytes"]
    if bits == 32:
        assert structured["size_bytes"] < 0.5 * dense["size_bytes"]
        assert unstructured["size_bytes"] == pytest.approx(dense["size_bytes"], rel=0.01)


def test_export_check_rejects_forged_claims(results: Callable[[str, int], TrialResult]) -> None:
    dense = results("dense", 32)
    units = int(dense.metrics["output_units"])
    fp32 = dense.onnx_path
    fp16 = results("unstructured", 16).onnx_path
    int8 = results("unstructured", 8).onnx_path
    structured = results("structured", 32)
    forged = [
        (fp32, ExportClaim(bits=8, units=units, dense_units=units), "QuantizeLinear"),
        (fp32, ExportClaim(bits=16, units=units, dense_units=units), "float16"),
        (fp32, ExportClaim(bits=3, units=units, dense_units=units), "levels"),
        (fp32, ExportClaim(bits=4, units=units, dense_units=units), "int4"),
        (int8, ExportClaim(bits=4, units=units, dense_units=units), "int4"),
        (fp16, ExportClaim(bits=32, units=units, dense_units=units), "float16"),
        (int8, ExportClaim(bits=32, units=units, dense_units=units), "quantization ops"),
        (
            fp32,
            ExportClaim(bits=32, units=units // 2, dense_units=units, structured=True),
            "structured pruning is claimed",
        ),
        (
            structured.onnx_path,
            ExportClaim(bits=32, units=units - 1, dense_units=units, structured=True),
            "structured pruning is claimed",
        ),
    ]
    for path, claim, words in forged:
        with pytest.raises(ExportClaimError, match=words) as info:
            check_export(path, claim, what="forged")
        assert isinstance(info.value, SlimtuneError)
        assert "Fix:" in str(info.value) and path.name in str(info.value)
    # The honest claims pass.
    honest = ExportClaim(
        bits=32,
        units=int(structured.metrics["output_units"]),
        dense_units=units,
        structured=True,
    )
    assert check_export(structured.onnx_path, honest, what="honest")["export_check"] == "ok"
    assert check_export(fp32, ExportClaim(bits=32, units=units, dense_units=units), what="d")


def test_a_trial_whose_artifact_lies_fails(
    results: Callable[[str, int], TrialResult],
    tiny_task: Task,
    shared_cache: Path,
    make_settings: Callable[..., TrialSettings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If quantization silently did nothing, run_trial raises instead of returning a result."""
    import shutil

    import trials._trial_export

    def no_quantization(fp32_path: Path, out_path: Path, *args: object, **kwargs: object) -> None:
        shutil.copyfile(fp32_path, out_path)

    monkeypatch.setattr(trials._trial_export, "quantize_int8", no_quantization)
    params = TrialParams(lr=1e-3, batch_size=32, sparsity=0.0, bits=8)
    with pytest.raises(ExportClaimError, match="8-bit"):
        run_trial(tiny_task, params, make_settings(shared_cache, tmp_path))


def test_distillation_from_the_dense_model(
    tiny_task: Task,
    shared_cache: Path,
    make_settings: Callable[..., TrialSettings],
    tmp_path: Path,
) -> None:
    import torch

    from trials._train import Distillation, fit

    # With weight 1 the student learns the teacher's outputs only: it moves towards them.
    torch.manual_seed(0)
    teacher, student = tiny_task.build_model(), tiny_task.build_model()
    x, y = tiny_task.train_data()
    with torch.no_grad():
        before = (student(x[:64]) - teacher(x[:64])).abs().mean()
    fit(
        student,
        x[:256],
        y[:256],
        epochs=3,
        lr=3e-3,
        batch_size=32,
        seed=0,
        what="distill",
        distill=Distillation(teacher, weight=1.0, temperature=2.0),
    )
    with torch.no_grad():
        after = (student(x[:64]) - teacher(x[:64])).abs().mean()
    assert after < 0.75 * before
    # In a trial it is a knob, logged as a tag.
    params = TrialParams(
        lr=1e-3, batch_size=32, sparsity=0.5, bits=32, distill_weight=0.5, distill_temperature=3.0
    )
    result = run_trial(tiny_task, params, make_settings(shared_cache, tmp_path))
    assert result.tags["distill"] == "weight=0.5,T=3"
    assert result.metrics["accuracy"] > 0.6
