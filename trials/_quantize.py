"""Weight grids and ONNX Runtime quantization formats: the one place that says which integer grid
a bit-width (and int8 format) puts the weights on, so that fake quantization during fine-tuning,
post-training rounding and the exported artifact all use the same grid.

See docs/quantization.md for what each format is in ONNX Runtime and what its CPU kernel computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from onnxruntime.quantization import QuantType
from torch import Tensor

from searchspace import INT8_FORMATS, ConfigError


@dataclass(frozen=True)
class WeightGrid:
    """A symmetric integer grid for weights: ``w = scale * q`` with integer ``q`` in
    ``[-qmax, qmax]`` and ``scale = max|w| / qmax``, per output channel (axis 0) or per tensor.

    This is the grid ONNX Runtime's static quantizer uses for symmetric int8 weights
    (``qmax=127``; 64 with ``reduce_range``), and the one slimtune's int4 export writes
    (``qmax=7``), so weights fake-quantized on it export unchanged."""

    qmax: int
    per_channel: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.qmax, bool) or not isinstance(self.qmax, int) or self.qmax < 1:
            raise ConfigError(
                field="qmax",
                value=self.qmax,
                rule="a weight grid needs an integer qmax >= 1",
                fix="build grids with weight_grid(bits) or an Int8Format",
                source="WeightGrid",
            )

    @property
    def levels(self) -> int:
        """How many distinct values a channel (or tensor) can take."""
        return 2 * self.qmax + 1

    def scale(self, weight: Tensor) -> Tensor:
        """``max|w| / qmax`` per output channel (shape ``[out]``) or per tensor (a scalar)."""
        magnitude = weight.detach().abs()
        if self.per_channel:
            peak = magnitude.amax(dim=tuple(range(1, weight.dim())))
        else:
            peak = magnitude.amax()
        return (peak / self.qmax).clamp_min(1e-12).float()

    def fake_quantize(self, weight: Tensor) -> Tensor:
        """Round ``weight`` to the grid; the gradient passes straight through (STE)."""
        scale = self.scale(weight)
        if self.per_channel:
            zero = torch.zeros(scale.shape, dtype=torch.int32, device=scale.device)
            return torch.fake_quantize_per_channel_affine(
                weight, scale, zero, 0, -self.qmax, self.qmax
            )
        zero_point = torch.zeros((), dtype=torch.int32, device=scale.device)
        return torch.fake_quantize_per_tensor_affine(
            weight, scale, zero_point, -self.qmax, self.qmax
        )

    def describe(self) -> str:
        return f"[-{self.qmax}, {self.qmax}] {'per-channel' if self.per_channel else 'per-tensor'}"


def weight_grid(bits: int) -> WeightGrid:
    """The default grid of a bit-width below 16: symmetric ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` per
    output channel (int4: ``[-7, 7]``; int8: ``[-127, 127]``, the ``u8s8-per-channel`` format)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ConfigError(
            field="bits",
            value=bits,
            rule="a weight grid exists for 2 to 8 bits (16 and 32 bits are float)",
            fix="call weight_grid only for bits <= 8",
            source="weight_grid",
        )
    return WeightGrid(qmax=2 ** (bits - 1) - 1, per_channel=True)


@dataclass(frozen=True)
class Int8Format:
    """One of ONNX Runtime's static QDQ int8 formats: uint8 or int8 activations (``u8``/``s8``,
    calibrated min-max), symmetric int8 weights per output channel or per tensor, and
    ``reduce_range`` (7-bit weights, ``[-64, 64]``, for CPUs whose int8 kernels could overflow
    without VNNI)."""

    name: str
    activations: Literal["u8", "s8"]
    per_channel: bool
    reduce_range: bool = False

    @property
    def tag(self) -> str:
        """The ``format`` tag of an artifact in this format."""
        return f"int8-qdq-{self.name}"

    @property
    def grid(self) -> WeightGrid:
        return WeightGrid(qmax=64 if self.reduce_range else 127, per_channel=self.per_channel)

    @property
    def activation_type(self) -> QuantType:
        return QuantType.QUInt8 if self.activations == "u8" else QuantType.QInt8


_INT8: dict[str, Int8Format] = {
    f.name: f
    for f in (
        Int8Format("u8s8-per-channel", "u8", per_channel=True),
        Int8Format("s8s8-per-channel", "s8", per_channel=True),
        Int8Format("u8s8-per-channel-reduce-range", "u8", per_channel=True, reduce_range=True),
        Int8Format("u8s8-per-tensor", "u8", per_channel=False),
        Int8Format("s8s8-per-tensor", "s8", per_channel=False),
    )
}

DEFAULT_INT8_FORMAT = _INT8["u8s8-per-channel"]


def int8_format(name: str) -> Int8Format:
    """The int8 format called ``name`` (one of ``searchspace.INT8_FORMATS``)."""
    try:
        return _INT8[name]
    except KeyError:
        raise ConfigError(
            field="int8_format",
            value=name,
            rule=f"the int8 format must be one of {list(_INT8)} (or auto in a config)",
            fix="write quantization: {int8_format: auto} or one of the names above",
            source="trials",
        ) from None


def int8_formats() -> tuple[Int8Format, ...]:
    """Every int8 format ``auto`` chooses from, in the order of ``searchspace.INT8_FORMATS``."""
    return tuple(_INT8[name] for name in INT8_FORMATS)


# The int4 artifact (docs/quantization.md): symmetric int4 weights on WeightGrid(qmax=7) per
# output channel; Linear layers as com.microsoft MatMulNBits, Conv layers as int4 initializers
# with a DequantizeLinear (opset 21); activations stay float.
INT4_FORMAT = "int4-matmulnbits-dqconv"
INT4_GRID = WeightGrid(qmax=7, per_channel=True)
INT4_COMPUTE = (
    "Linear: MatMulNBits reads the int4 weights and, at accuracy_level 4, quantizes activations "
    "to int8 per block (fp32 where the CPU has no such kernel); Conv: ONNX Runtime's CPU provider "
    "keeps the int4 DequantizeLinear and dequantizes the weights to fp32 at every run, then "
    "computes the Conv in fp32"
)
