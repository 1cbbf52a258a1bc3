"""ONNX Runtime's "Axis 1 is out-of-range for weight '...' with rank 1" line (a LayerNorm weight
under per-channel int8) is kept out of the logs; every other record still passes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
from torch import nn

from trials._export import export_onnx, quantize_int8
from trials._ort_log import rank1_axis_warnings_dropped

NOISE = "is out-of-range for weight"


class _Normed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.norm1 = nn.LayerNorm(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm1(self.fc(x)))


class _Reader(CalibrationDataReader):
    def __init__(self, x: np.ndarray) -> None:
        self.rows = iter([{"input": x}])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.rows, None)


def test_a_layernorm_under_per_channel_int8_logs_no_axis_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 16)
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(_Normed().eval(), x[:1], fp32, what="t")
    calibration = x[:1].numpy()
    # ONNX Runtime itself does log the line for this model (what the filter is for) ...
    with caplog.at_level(logging.WARNING):
        quantize_static(
            str(fp32),
            str(tmp_path / "raw.onnx"),
            _Reader(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
        )
    assert any(NOISE in r.getMessage() and "rank 1" in r.getMessage() for r in caplog.records)
    caplog.clear()
    # ... and our quantization (per-channel by default) does not pass it on.
    with caplog.at_level(logging.WARNING):
        quantize_int8(fp32, tmp_path / "int8.onnx", calibration, what="t")
    assert not [r.getMessage() for r in caplog.records if NOISE in r.getMessage()]
    ops = {n.op_type for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "LayerNormalization"} <= ops


def test_only_the_rank1_axis_line_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), rank1_axis_warnings_dropped():
        logging.warning("Axis 1 is out-of-range for weight 'blocks.0.norm1.weight' with rank 1")
        logging.warning("Axis 3 is out-of-range for weight 'conv.weight' with rank 2")
        logging.warning("something else went wrong")
        logging.getLogger("other").warning("Axis 1 is out-of-range for weight 'x' with rank 1")
    assert [r.getMessage() for r in caplog.records] == [
        "Axis 3 is out-of-range for weight 'conv.weight' with rank 2",
        "something else went wrong",
        "Axis 1 is out-of-range for weight 'x' with rank 1",  # not ONNX Runtime's logger
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the filter is gone after the block
        logging.warning("Axis 1 is out-of-range for weight 'w' with rank 1")
    assert len(caplog.records) == 1
