"""The check of ``int8_format: auto`` that the CPU's int8 kernels compute a format's own math.

The model below makes every pair of 8-bit products as large as the full int8 range allows (all
weights at +127, every activation at the top of its range): where the u8 x s8 kernels add pairs
in 16 bits (x86 without VNNI), the full-range formats saturate and their output departs from
their QDQ math by far more than rounding; 7-bit (reduce-range) weights cannot. On CPUs with
VNNI, or ARM, nothing saturates and every format computes its math.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from trials import cpu_identity, faithful_int8_formats
from trials._export import export_onnx, quantize_int8
from trials._int8_fidelity import FLOOR, kernel_deviation, kernel_deviations
from trials._quantize import int8_formats

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")

# x86 CPUs whose int8 kernels add pairs of u8 x s8 products in 16 bits.
_VNNI = {"avx512_vnni", "avx_vnni", "amx_int8"}


def _pairs_in_16_bits() -> bool:
    cpu = cpu_identity()
    return cpu["machine"] in ("x86_64", "AMD64") and not (_VNNI & set(cpu["cpu_isa"]))


@pytest.fixture(scope="module")
def candidates(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, bytes], np.ndarray]:
    """A 64 -> 8 Linear layer with every weight equal, in every int8 format, and inputs at the
    top of the calibrated range."""
    model = nn.Sequential(nn.Linear(64, 8, bias=False)).eval()
    with torch.no_grad():
        model[0].weight.fill_(0.5)
    tmp = tmp_path_factory.mktemp("fidelity")
    fp32 = tmp / "fp32.onnx"
    export_onnx(model, torch.ones(1, 64), fp32, what="test")
    calibration = np.random.default_rng(0).uniform(0.0, 1.0, (32, 64)).astype(np.float32)
    calibration[0] = 1.0
    models: dict[str, bytes] = {}
    for fmt in int8_formats():
        path = Path(tmp) / f"{fmt.name}.onnx"
        quantize_int8(fp32, path, calibration, what="test", fmt=fmt)
        models[fmt.name] = path.read_bytes()
    rows = np.ones((4, 64), dtype=np.float32)
    return models, rows


def test_reduce_range_computes_its_math_on_every_cpu(
    candidates: tuple[dict[str, bytes], np.ndarray],
) -> None:
    models, rows = candidates
    assert kernel_deviation(models["u8s8-per-channel-reduce-range"], rows) <= FLOOR


def test_saturating_kernels_are_found_and_refused(
    candidates: tuple[dict[str, bytes], np.ndarray],
) -> None:
    models, rows = candidates
    deviations = kernel_deviations(models, rows)
    full_range = {name for name in deviations if "reduce-range" not in name}
    if _pairs_in_16_bits():
        # Saturated: the output is far from the math (0.5 * 64 per unit, clipped to about half).
        assert all(deviations[name] > 0.2 for name in full_range), deviations
        assert faithful_int8_formats(deviations) == {"u8s8-per-channel-reduce-range"}
    else:
        assert all(deviations[name] <= FLOOR for name in full_range), deviations
        assert faithful_int8_formats(deviations) == set(deviations)


def test_the_rule_keeps_what_departs_no_more_than_twice_the_best_or_one_percent() -> None:
    assert faithful_int8_formats({"a": 0.0, "b": 0.009, "c": 0.011}) == {"a", "b"}
    assert faithful_int8_formats({"a": 0.02, "b": 0.039, "c": 0.041}) == {"a", "b"}
    assert faithful_int8_formats({"a": math.inf, "b": 0.3}) == {"b"}
    assert faithful_int8_formats({"a": math.inf}) == set()


def test_a_model_with_no_rows_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="at least one input row"):
        kernel_deviations({}, np.zeros((0, 4), dtype=np.float32))
