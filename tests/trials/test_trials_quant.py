"""Real int4, the int8 formats and the quantization scheme (qat / ptq).

Unit level, on a hand-made Conv+Linear model: the grid fine-tuning rounds to is exactly the grid
the artifact stores, for every int8 format and for int4; ``auto`` measures the int8 formats once
and caches the choice under a lock. End to end, on the tiny task: ptq artifacts load in ONNX
Runtime, show their claim, match the PyTorch model, and int4 < int8 < fp32 in file size; the
export check rejects artifacts that lie.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper
from torch import nn

from searchspace import INT8_FORMATS, TrialParams
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
from trials._compress import prunable_layers, round_to_grid
from trials._export import export_onnx, quantize_int4, quantize_int8
from trials._int8_fidelity import faithful as faithful_int8_formats
from trials._quantize import INT4_GRID, int8_format, int8_formats, weight_grid
from trials._quantize_auto import Int8Choice, Timing, choose_int8_format, pick
from trials._quantize_int4 import Int4Export, unpack_matmulnbits

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")

SettingsFactory = Callable[..., TrialSettings]
FAST = Timing(rounds=1, warmup=1, runs=3)
# ORT vs PyTorch on 360 validation images (see test_trials_matrix): int4 quantizes the Linear
# layers' activations to int8 in MatMulNBits (3 images), int8 every activation (5 points).
TOLERANCE = {4: 3.5 / 360, 8: 0.05}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 40), nn.Linear(40, 10)
    ).eval()


def _example() -> torch.Tensor:
    return torch.randn(1, 1, 8, 8)


def _calibration() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((32, 1, 8, 8)).astype(np.float32)


def _stored_weights(path: Path) -> list[np.ndarray]:
    """Each layer's weight as the artifact defines it (dequantized), output units on axis 0."""
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            q = inits[node.input[0]].astype(np.float32)
            if q.ndim < 2:
                continue
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            shape[axis] = -1
            scale = inits[node.input[1]].astype(np.float32)
            out.append(q * (scale.reshape(shape) if scale.size > 1 else scale))
        elif node.op_type == "MatMulNBits":
            k = next(a.i for a in node.attribute if a.name == "K")
            codes = unpack_matmulnbits(inits[node.input[1]], k).astype(np.float32)
            out.append(codes * inits[node.input[2]][:, :1])
    return out


def _same_weights(stored: list[np.ndarray], model: nn.Module) -> None:
    torch_weights = [layer.weight.detach().numpy() for layer in prunable_layers(model)]
    assert len(stored) == len(torch_weights)
    for w in torch_weights:
        match = [s for s in stored if s.shape == w.shape] + [
            s.T for s in stored if s.T.shape == w.shape and s.ndim == 2
        ]
        assert match, f"no stored weight of shape {w.shape}"
        assert np.abs(match[0] - w).max() <= 1e-6 * np.abs(w).max()


def test_searchspace_and_trials_agree_on_the_int8_formats() -> None:
    assert tuple(f.name for f in int8_formats()) == INT8_FORMATS
    assert int8_format("u8s8-per-channel").grid == weight_grid(8)
    assert int8_format("u8s8-per-channel-reduce-range").grid.qmax == 64
    assert not int8_format("s8s8-per-tensor").grid.per_channel
    assert weight_grid(4) == INT4_GRID and INT4_GRID.levels == 15


@pytest.mark.parametrize("name", INT8_FORMATS)
def test_int8_artifact_stores_the_grid_qat_trained_on(name: str, tmp_path: Path) -> None:
    fmt = int8_format(name)
    model = _model()
    round_to_grid(prunable_layers(model), fmt.grid)
    export_onnx(model, _example(), tmp_path / "fp32.onnx", what="grid")
    out = tmp_path / "int8.onnx"
    quantize_int8(tmp_path / "fp32.onnx", out, _calibration(), what="grid", fmt=fmt)
    _same_weights(_stored_weights(out), model)
    units = sum(layer.weight.shape[0] for layer in prunable_layers(model))
    claim = ExportClaim(bits=8, units=units, dense_units=units, int8_format=name)
    assert check_export(out, claim, what="grid")["export_check"] == "ok"
    # Claiming another format is caught: per-channel vs per-tensor, u8 vs s8, 7 vs 8 bits.
    others = {
        "u8s8-per-channel": "u8s8-per-tensor",
        "s8s8-per-channel": "u8s8-per-channel",
        "u8s8-per-channel-reduce-range": "u8s8-per-channel",
        "u8s8-per-tensor": "u8s8-per-channel",
        "s8s8-per-tensor": "u8s8-per-tensor",
    }
    forged = ExportClaim(bits=8, units=units, dense_units=units, int8_format=others[name])
    with pytest.raises(ExportClaimError, match="format"):
        check_export(out, forged, what="forged")


def test_int4_artifact_is_exact_runs_in_ort_and_is_smallest(tmp_path: Path) -> None:
    model = _model()
    round_to_grid(prunable_layers(model), INT4_GRID)
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(model, _example(), fp32, what="int4")
    out = tmp_path / "int4.onnx"
    written = quantize_int4(fp32, out, what="int4")
    assert (written.matmulnbits, written.dequantize) == (2, 1)
    stored = onnx.load(str(out))
    assert next(o.version for o in stored.opset_import if o.domain in ("", "ai.onnx")) == 21
    ops = {n.op_type for n in stored.graph.node}
    assert {"MatMulNBits", "DequantizeLinear", "Conv"} <= ops and "Gemm" not in ops
    _same_weights(_stored_weights(out), model)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        expected = model(x).numpy()
    got = session.run(None, {"input": x.numpy()})[0]
    # Exact weights; MatMulNBits quantizes activations to int8 per block (accuracy_level 4).
    assert np.abs(got - expected).max() <= 0.02 * np.abs(expected).max()
    int8 = tmp_path / "int8.onnx"
    quantize_int8(fp32, int8, _calibration(), what="int8")
    assert out.stat().st_size < int8.stat().st_size < fp32.stat().st_size


class _Tied(nn.Module):
    """One Linear read twice (tied weights), between two of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.out = nn.Linear(64, 32), nn.Linear(32, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x.flatten(1)).relu()
        h = h + self.b(h).relu()
        return self.out(h + self.b(h))


def test_int4_stores_a_weight_that_two_layers_read_once(tmp_path: Path) -> None:
    """A weight read by two layers (tied, or identical ones the exporter merged) is stored once
    as int4, dequantized once and read by both; before, it stayed float and the export check
    refused the artifact."""
    torch.manual_seed(0)
    model = _Tied().eval()
    round_to_grid(prunable_layers(model), INT4_GRID)
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(model, _example(), fp32, what="tied")
    out = tmp_path / "int4.onnx"
    written = quantize_int4(fp32, out, what="tied")
    graph = onnx.load(str(out)).graph
    assert (written.matmulnbits, written.dequantize) == (2, 2)  # a and out; b's two readers
    names = {t.name for t in graph.initializer}
    assert not names & {"a.weight", "b.weight", "out.weight"}, names  # no float weight left
    [dq] = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert len([n for n in graph.node if dq.output[0] in n.input]) == 2
    int4 = [t for t in graph.initializer if t.data_type == TensorProto.INT4]
    assert [tuple(t.dims) for t in int4] == [(32, 32)]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        expected = model(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    # The weights are on the grid already: only MatMulNBits' int8 activations move the output.
    assert np.abs(got - expected).max() <= 0.02 * np.abs(expected).max()


def test_pick_prefers_the_precise_format_among_ties() -> None:
    base = dict.fromkeys(INT8_FORMATS, 1.0)
    assert pick(base) == "u8s8-per-channel"
    assert pick({**base, "s8s8-per-tensor": 0.97}) == "u8s8-per-channel"  # within 5 %: a tie
    assert pick({**base, "u8s8-per-channel-reduce-range": 0.52}) == "u8s8-per-channel-reduce-range"
    assert pick({**dict.fromkeys(INT8_FORMATS, 0.010), "u8s8-per-tensor": 0.008}) == (
        "u8s8-per-channel"  # 2 us apart on a 10 us model: overhead, a tie
    )
    # Only the allowed (faithful) formats are chosen from, the fastest of them as the bound.
    slow_safe = {**base, "u8s8-per-channel-reduce-range": 1.3}
    assert pick(slow_safe, {"u8s8-per-channel-reduce-range"}) == "u8s8-per-channel-reduce-range"
    assert pick(slow_safe, {"u8s8-per-channel-reduce-range", "s8s8-per-tensor"}) == (
        "s8s8-per-tensor"
    )
    assert pick(base, set()) == "u8s8-per-channel"  # none known faithful: every one


def _choose(setting: str, cache_dir: Path) -> Int8Choice:
    """The int8 format of the test model for ``setting``, timed quickly when ``auto``."""
    return choose_int8_format(
        setting,
        task_name="grid-task",
        dense=_model(),
        example=_example(),
        calibration=_calibration(),
        cache_dir=cache_dir,
        what=setting,
        timing=FAST,
    )


def test_auto_measures_once_per_machine_under_a_lock(tmp_path: Path) -> None:
    choices: list[Int8Choice] = []
    threads = [
        threading.Thread(target=lambda: choices.append(_choose("auto", tmp_path))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(c.source for c in choices) == ["cached", "measured"]
    assert choices[0].fmt == choices[1].fmt and choices[0].latencies_ms == choices[1].latencies_ms
    (record,) = (tmp_path / "int8-format").glob("*.json")
    data = json.loads(record.read_text())
    assert set(data["latencies_ms"]) == set(INT8_FORMATS) and data["chosen"] == choices[0].fmt.name
    assert data["key"]["task"] == "grid-task" and data["key"]["onnxruntime"] == ort.__version__
    tags = choices[0].tags()
    assert tags["int8_format"] == choices[0].fmt.name
    assert set(json.loads(tags["int8_format_latencies_ms"])) == set(INT8_FORMATS)
    assert set(json.loads(tags["int8_format_kernel_deviation"])) == set(INT8_FORMATS)
    assert choices[0].fmt.name in faithful_int8_formats(choices[0].deviations)
    # A cache written before the kernels were checked is measured again.
    data.pop("kernel_deviations")
    record.write_text(json.dumps(data))
    assert _choose("auto", tmp_path).source == "measured"
    assert "kernel_deviations" in json.loads(record.read_text())
    # A damaged cache is measured again, not trusted; another task has its own entry.
    record.write_text("{not json")
    again = _choose("auto", tmp_path)
    assert again.source == "measured" and json.loads(record.read_text())["chosen"]
    # A format named in the config is used as it is, never measured.
    named = _choose("s8s8-per-channel", tmp_path / "none")
    assert (named.fmt.name, named.source, named.latencies_ms) == ("s8s8-per-channel", "config", {})
    assert not (tmp_path / "none").exists()


@pytest.fixture(scope="module")
def trial(
    tiny_task: Task,
    shared_cache: Path,
    make_settings: SettingsFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., TrialResult]:
    """Runs each (scheme, pruning, bits) once, on first use; ("dense", ...) is the baseline."""
    done: dict[tuple[str, str, int], TrialResult] = {}

    def get(scheme: str, pruning: str, bits: int) -> TrialResult:
        key = (scheme, pruning, bits)
        if key not in done:
            settings = make_settings(shared_cache, tmp_path_factory.mktemp(f"{scheme}{bits}"))
            if scheme == "dense":
                done[key] = run_baseline(tiny_task, settings)
            else:
                params = TrialParams(
                    lr=1e-3,
                    batch_size=32,
                    sparsity=0.5,
                    bits=bits,
                    pruning=pruning,
                    quant_scheme=scheme,
                )
                done[key] = run_trial(tiny_task, params, settings)
        return done[key]

    return get


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("pruning", ["unstructured", "structured"])
def test_ptq_end_to_end(
    pruning: str, bits: int, trial: Callable[..., TrialResult], tiny_task: Task
) -> None:
    result = trial("ptq", pruning, bits)
    m, tags = result.metrics, result.tags
    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    x, _ = tiny_task.val_data()
    assert session.run(None, {"input": x[:2].numpy()})[0].shape == (2, 10)
    assert onnx_accuracy(result.onnx_path, tiny_task) == pytest.approx(m["accuracy"])
    assert abs(m["accuracy"] - m["torch_accuracy"]) <= TOLERANCE[bits]
    assert m["accuracy"] > 0.6
    assert tags["quant_scheme"] == "ptq" and tags["artifact"] == "real"
    assert tags["export_check"] == "ok"
    ops = {n.op_type for n in onnx.load(str(result.onnx_path)).graph.node}
    if bits == 4:
        assert tags["format"] == "int4-matmulnbits-dqconv" and "MatMulNBits" in ops
    else:
        assert tags["format"] == f"int8-qdq-{tags['int8_format']}"
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        assert tags["int8_format_source"] in ("measured", "cached")


@pytest.mark.parametrize("pruning", ["unstructured", "structured"])
def test_ptq_sizes_are_ordered(pruning: str, trial: Callable[..., TrialResult]) -> None:
    size = {bits: trial("ptq", pruning, bits).metrics["size_bytes"] for bits in (4, 8)}
    dense = trial("dense", "none", 32).metrics["size_bytes"]
    assert size[4] < 0.65 * size[8] and size[8] < 0.5 * dense


def test_ptq_fine_tunes_in_float_and_qat_on_the_grid(
    tiny_task: Task,
    shared_cache: Path,
    make_settings: SettingsFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import trials._trial

    grids = []
    real_attach = trials._trial.attach_grids

    def spy(layers: list[nn.Module], masks: list[object], layer_grids: list[object]) -> None:
        grids.append(set(layer_grids).pop() if len(set(layer_grids)) == 1 else layer_grids)
        real_attach(layers, masks, layer_grids)  # type: ignore[arg-type]

    monkeypatch.setattr(trials._trial, "attach_grids", spy)
    for scheme in ("qat", "ptq"):
        params = TrialParams(lr=1e-3, batch_size=64, sparsity=0.3, bits=4, quant_scheme=scheme)
        settings = make_settings(shared_cache, tmp_path / scheme, epochs=1)
        assert run_trial(tiny_task, params, settings).tags["quant_scheme"] == scheme
    assert grids == [INT4_GRID, None]


def test_simulated_widths_stay_simulated(trial: Callable[..., TrialResult]) -> None:
    result = trial("qat", "unstructured", 3)
    dense = trial("dense", "none", 32).metrics
    assert (result.tags["artifact"], result.tags["format"]) == ("simulated", "fp32-baked-3bit")
    assert result.metrics["size_bytes"] == pytest.approx(dense["size_bytes"], rel=0.01)
    assert result.metrics["size_packed_bytes"] < 0.15 * result.metrics["size_bytes"]


def _units(result: TrialResult) -> int:
    return int(result.metrics["output_units"])


def test_export_check_rejects_lying_int4_artifacts(
    trial: Callable[..., TrialResult], tmp_path: Path
) -> None:
    int4 = trial("ptq", "unstructured", 4)
    units = _units(int4)
    claim4 = ExportClaim(bits=4, units=units, dense_units=units)
    assert check_export(int4.onnx_path, claim4, what="honest")["export_check"] == "ok"
    for bits in (8, 32, 16, 3):
        with pytest.raises(ExportClaimError, match=r"int4|int8|float16|quantization ops"):
            check_export(int4.onnx_path, ExportClaim(bits, units, units), what="forged")

    def tampered(edit: Callable[[onnx.ModelProto], None]) -> Path:
        model = onnx.load(str(int4.onnx_path))
        edit(model)
        path = tmp_path / f"tampered{len(list(tmp_path.iterdir()))}.onnx"
        onnx.save(model, str(path))
        return path

    def off_grid(model: onnx.ModelProto) -> None:  # a -8 code: not the symmetric [-7, 7] grid
        t = next(t for t in model.graph.initializer if t.data_type == TensorProto.INT4)
        q = numpy_helper.to_array(t).astype(np.int8)
        q.flat[0] = -8
        t.CopyFrom(numpy_helper.from_array(q.astype(ml_dtypes.int4), t.name))

    def zero_points(model: onnx.ModelProto) -> None:
        node = next(n for n in model.graph.node if n.op_type == "MatMulNBits")
        while len(node.input) < 4:
            node.input.append("")
        node.input[3] = "zp"
        model.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.uint8), "zp"))

    def float_conv(model: onnx.ModelProto) -> None:  # a Conv back on an fp32 weight
        dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear")
        w = next(t for t in model.graph.initializer if t.name == dq.input[0])
        weight = numpy_helper.to_array(w).astype(np.float32)
        model.graph.initializer.append(numpy_helper.from_array(weight, "fp32_weight"))
        conv = next(n for n in model.graph.node if dq.output[0] in n.input)
        conv.input[1] = "fp32_weight"

    for edit, words in ((off_grid, "grid"), (zero_points, "zero points"), (float_conv, "int4")):
        with pytest.raises(ExportClaimError, match=words):
            check_export(tampered(edit), claim4, what="tampered")


def test_a_trial_whose_int4_artifact_lies_fails(
    tiny_task: Task,
    shared_cache: Path,
    make_settings: SettingsFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If the int4 export silently wrote the fp32 file, run_trial raises instead of measuring."""
    import trials._trial_export

    def no_int4(fp32_path: Path, out_path: Path, *args: object, **kwargs: object) -> Int4Export:
        shutil.copyfile(fp32_path, out_path)
        return Int4Export(matmulnbits=0, dequantize=0)

    monkeypatch.setattr(trials._trial_export, "quantize_int4", no_int4)
    params = TrialParams(lr=1e-3, batch_size=32, sparsity=0.0, bits=4)
    with pytest.raises(ExportClaimError, match="int4"):
        run_trial(tiny_task, params, make_settings(shared_cache, tmp_path, epochs=0))
