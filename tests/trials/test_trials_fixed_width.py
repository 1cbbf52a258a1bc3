"""An artifact's size depends on its structure, not on calibrated values: small integer tensors
(ONNX Runtime's int8 zero points) are stored at a fixed width, not as protobuf varints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

from trials._artifact_clean import fixed_width_tensors
from trials._export import export_onnx, quantize_int8

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def test_varint_tensors_become_raw_bytes_with_the_same_values() -> None:
    zero_points = helper.make_tensor("zp", onnx.TensorProto.UINT8, [3], [0, 127, 200])
    signed = helper.make_tensor("s", onnx.TensorProto.INT8, [2], [-3, 5])
    scale = helper.make_tensor("scale", onnx.TensorProto.FLOAT, [1], [0.5])
    graph = helper.make_graph([], "g", [], [], initializer=[zero_points, signed, scale])
    model = helper.make_model(graph)
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}

    assert fixed_width_tensors(model) == 2
    after = {t.name: t for t in model.graph.initializer}
    for name in ("zp", "s"):
        assert not after[name].int32_data and after[name].raw_data
        np.testing.assert_array_equal(numpy_helper.to_array(after[name]), before[name])
    assert after["zp"].data_type == onnx.TensorProto.UINT8
    assert fixed_width_tensors(model) == 0  # nothing left to rewrite


def _zero_points(path: Path) -> list[int]:
    model = onnx.load(str(path))
    return [
        int(v)
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.UINT8 and t.name.endswith("zero_point")
        for v in numpy_helper.to_array(t).ravel()
    ]


def test_int8_files_of_one_structure_have_one_size_whatever_the_calibration(
    tmp_path: Path,
) -> None:
    """Activation zero points below 128 (inputs >= 0) and above (inputs mostly negative) took
    1 and 2 bytes as varints; the two files must now have the same bytes count."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(model, torch.randn(1, 16), fp32, what="test")
    rng = np.random.default_rng(0)
    positive = rng.uniform(0.0, 1.0, (32, 16)).astype(np.float32)
    negative = rng.uniform(-1.0, 0.05, (32, 16)).astype(np.float32)
    low, high = tmp_path / "low.onnx", tmp_path / "high.onnx"
    quantize_int8(fp32, low, positive, what="test")
    quantize_int8(fp32, high, negative, what="test")

    assert max(_zero_points(low)) < 128 <= max(_zero_points(high))  # the case that differed
    assert low.stat().st_size == high.stat().st_size
    for path in (low, high):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {session.get_inputs()[0].name: positive[:2]})
        assert out.shape == (2, 4)
