"""End to end: every bit-width path through run_trial / run_baseline on a tiny task."""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from searchspace import TrialParams
from trials import (
    Task,
    TrialResult,
    TrialSettings,
    faithful_int8_formats,
    onnx_accuracy,
    run_baseline,
    run_trial,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")

REQUIRED_METRICS = {
    "accuracy",
    "size_bytes",
    "size_gzip_bytes",
    "size_packed_bytes",
    "latency_ms",
    "latency_p90_ms",
    "latency_std_ms",
    "latency_cv",
    "torch_accuracy",
    "nonzero_params",
    "total_params",
    "sparsity_achieved",
    "train_seconds",
    "trial_seconds",
}
REQUIRED_TAGS = {"artifact", "format", "onnx_ops", "quantization"}
QDQ = {"QuantizeLinear", "DequantizeLinear"}

# fp32 ORT vs PyTorch: same weights, same arithmetic up to float rounding, so at most one
# validation sample (of 360) may flip. int8 also quantizes activations: allow 5 points.
FP32_TOLERANCE = 1.5 / 360
INT8_TOLERANCE = 0.05

CASES = {
    "dense-baseline": None,
    "fp32-sparse80": TrialParams(lr=1e-3, batch_size=32, sparsity=0.8, bits=32),
    "int8-sparse50": TrialParams(lr=1e-3, batch_size=32, sparsity=0.5, bits=8),
    "int3-sparse50": TrialParams(lr=1e-3, batch_size=32, sparsity=0.5, bits=3),
}


@pytest.fixture(scope="module")
def results(
    tiny_task: Task,
    shared_cache: Path,
    make_settings: Callable[..., TrialSettings],
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str], TrialResult]:
    """Runs each case once, on first use, in its own work directory."""
    done: dict[str, TrialResult] = {}

    def get(case: str) -> TrialResult:
        if case not in done:
            settings = make_settings(shared_cache, tmp_path_factory.mktemp(case))
            params = CASES[case]
            done[case] = (
                run_baseline(tiny_task, settings)
                if params is None
                else run_trial(tiny_task, params, settings)
            )
        return done[case]

    return get


def _ops(result: TrialResult) -> set[str]:
    # Ops outside the default domain carry it as a prefix (com.microsoft.MatMulNBits).
    return {
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        for n in onnx.load(str(result.onnx_path)).graph.node
    }


@pytest.mark.parametrize("case", list(CASES))
def test_result_is_complete_and_measured(
    case: str, results: Callable[[str], TrialResult], tiny_task: Task
) -> None:
    result = results(case)
    assert set(result.metrics) >= REQUIRED_METRICS
    assert set(result.tags) >= REQUIRED_TAGS
    assert all(math.isfinite(v) for v in result.metrics.values())
    m = result.metrics
    assert m["latency_ms"] > 0
    assert m["latency_p90_ms"] >= m["latency_ms"]
    assert m["latency_std_ms"] >= 0 and m["latency_cv"] >= 0
    assert 0.0 <= m["accuracy"] <= 1.0
    assert m["train_seconds"] >= 0
    # The baseline reports the time it took to train, also when it came from the cache (trained
    # by an earlier test of the session): only a trial's own fine-tuning is inside its time.
    if result.tags.get("baseline_cached") != "true":
        assert m["trial_seconds"] >= m["train_seconds"]
    # The sizes are the file's, byte for byte.
    data = result.onnx_path.read_bytes()
    assert m["size_bytes"] == len(data)
    assert m["size_gzip_bytes"] == len(gzip.compress(data, compresslevel=9))
    # One self-contained file: no side .onnx.data, and no external initializers.
    assert not list(result.onnx_path.parent.glob("*.data"))
    assert result.tags["onnx_ops"] == ",".join(sorted(_ops(result)))
    # The logged accuracy is reproduced from the file alone.
    assert onnx_accuracy(result.onnx_path, tiny_task) == pytest.approx(m["accuracy"])


@pytest.mark.parametrize("case", list(CASES))
def test_batch_dimension_is_dynamic(
    case: str, results: Callable[[str], TrialResult], tiny_task: Task
) -> None:
    session = ort.InferenceSession(str(results(case).onnx_path), providers=["CPUExecutionProvider"])
    x, _ = tiny_task.val_data()
    name = session.get_inputs()[0].name
    for batch in (1, 3, 64):
        assert session.run(None, {name: x[:batch].numpy()})[0].shape == (batch, 10)


def test_fp32_artifact(results: Callable[[str], TrialResult]) -> None:
    result = results("fp32-sparse80")
    assert result.tags["artifact"] == "real"
    assert result.tags["format"] == "fp32"
    assert result.tags["quantization"] == "none"
    assert not QDQ & _ops(result)
    assert abs(result.metrics["accuracy"] - result.metrics["torch_accuracy"]) <= FP32_TOLERANCE


def test_dense_baseline_artifact(results: Callable[[str], TrialResult]) -> None:
    result = results("dense-baseline")
    assert result.tags["artifact"] == "real" and result.tags["format"] == "fp32"
    assert not QDQ & _ops(result)
    assert result.metrics["sparsity_achieved"] == 0.0
    assert result.metrics["nonzero_params"] == result.metrics["total_params"]
    assert abs(result.metrics["accuracy"] - result.metrics["torch_accuracy"]) <= FP32_TOLERANCE
    assert result.onnx_path.name == "baseline.onnx"


def test_int8_artifact_is_real_qdq_and_small(
    results: Callable[[str], TrialResult], tiny_task: Task
) -> None:
    result = results("int8-sparse50")
    dense = results("dense-baseline")
    assert result.tags["artifact"] == "real"
    # The format int8_format: auto chose on this CPU: one whose int8 kernels compute its math.
    chosen = result.tags["int8_format"]
    assert result.tags["format"] == f"int8-qdq-{chosen}"
    assert chosen in faithful_int8_formats(json.loads(result.tags["int8_format_kernel_deviation"]))
    assert result.tags["quantization"] == "static-qdq"
    assert _ops(result) >= QDQ
    model = onnx.load(str(result.onnx_path))
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert sum(int(np.prod(t.dims)) for t in int8_weights) >= 0.99 * sum(
        p.numel() for p in tiny_task.build_model().parameters() if p.dim() > 1
    )
    assert result.metrics["size_bytes"] < 0.4 * dense.metrics["size_bytes"]
    assert abs(result.metrics["accuracy"] - result.metrics["torch_accuracy"]) <= INT8_TOLERANCE
    assert result.metrics["size_packed_bytes"] < result.metrics["size_bytes"]


def test_low_bit_artifact_is_simulated_with_baked_weights(
    results: Callable[[str], TrialResult],
) -> None:
    result = results("int3-sparse50")
    assert result.tags["artifact"] == "simulated"
    assert result.tags["format"] == "fp32-baked-3bit"
    assert result.tags["quantization"] == "fake-quant-baked"
    assert not QDQ & _ops(result)
    assert result.metrics["size_packed_bytes"] < result.metrics["size_bytes"]
    assert abs(result.metrics["accuracy"] - result.metrics["torch_accuracy"]) <= FP32_TOLERANCE
    # The file really holds 3-bit weights: per output channel at most 7 levels (-3..3)*scale.
    model = onnx.load(str(result.onnx_path))
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if len(t.dims) > 1]
    assert len(weights) == 4
    for w in weights:
        for channel in w.reshape(w.shape[0], -1):
            assert len(np.unique(channel)) <= 7


def test_sparsity_is_achieved_and_shows_in_gzip_size(
    results: Callable[[str], TrialResult],
) -> None:
    sparse = results("fp32-sparse80")
    dense = results("dense-baseline")
    assert sparse.metrics["sparsity_achieved"] == pytest.approx(0.8, abs=1e-3)
    assert results("int8-sparse50").metrics["sparsity_achieved"] == pytest.approx(0.5, abs=0.02)
    assert results("int3-sparse50").metrics["sparsity_achieved"] >= 0.5
    assert sparse.metrics["nonzero_params"] < 0.21 * sparse.metrics["total_params"] + 200
    # Unstructured sparsity leaves the file as big as the dense one; only gzip sees it.
    assert sparse.metrics["size_bytes"] == pytest.approx(dense.metrics["size_bytes"], rel=0.01)
    assert sparse.metrics["size_gzip_bytes"] < 0.45 * dense.metrics["size_gzip_bytes"]
    # The zeros are in the file, not only in the PyTorch model.
    model = onnx.load(str(sparse.onnx_path))
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if len(t.dims) > 1]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros / sum(w.size for w in weights) == pytest.approx(0.8, abs=1e-3)
