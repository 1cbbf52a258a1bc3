"""Each layer's sensitivity, measured once per search and cached in ``cache_dir`` next to the
dense baseline: for each Conv/Linear layer and each of fp16, int8 and int4, the relative output
error ``|f_q(x) - f(x)|^2 / |f(x)|^2`` of the dense model on a calibration batch when only that
layer's weight is rounded to the format's grid (float16 for fp16; the PyTorch model, weights
only: int8 activation rounding is not in it). The dense fp32 artifact's bytes are measured then
too (exported once); a layer's bytes at each format are exact from its parameter counts."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from trials._compress import Prunable
from trials._plan_widths import LayerShape, WidthGroup

SENSITIVITY_VERSION = 3  # 3: fp16 measured too


class Rounding(Protocol):
    """What a format does to a weight: a ``WeightGrid``, or ``HALF`` (float16 storage)."""

    def fake_quantize(self, weight: torch.Tensor) -> torch.Tensor: ...


class _Half:
    """float16 storage: the weight rounded to float16 and read back as float32."""

    def fake_quantize(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.half().to(weight.dtype)


HALF = _Half()


@dataclass(frozen=True)
class Sensitivity:
    """What ``measure_sensitivity`` found for one dense model: each layer's loss per format
    (fp32 is 0) and the dense fp32 artifact's bytes and parameter count."""

    losses: dict[str, dict[str, float]]
    dense_file_bytes: int
    dense_param_count: int
    widths: tuple[WidthGroup, ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": SENSITIVITY_VERSION,
                "losses": self.losses,
                "dense_file_bytes": self.dense_file_bytes,
                "dense_param_count": self.dense_param_count,
                "widths": [g.to_dict() for g in self.widths],
            },
            indent=1,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Sensitivity | None:
        try:
            data = json.loads(text)
            if data.get("version") != SENSITIVITY_VERSION:
                return None
            return cls(
                losses={k: dict(v) for k, v in data["losses"].items()},
                dense_file_bytes=int(data["dense_file_bytes"]),
                dense_param_count=int(data["dense_param_count"]),
                widths=tuple(WidthGroup.from_dict(g) for g in data["widths"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def layer_bytes(layer: Prunable, fmt: str) -> int:
    """Predicted bytes of ``layer``'s weight (and bias) in an artifact storing it as ``fmt``."""
    return LayerShape.of("", layer).nbytes(fmt)


def measure_sensitivity(
    model: nn.Module,
    layers: Sequence[Prunable],
    names: Sequence[str],
    grids: Mapping[str, Rounding],
    inputs: torch.Tensor,
) -> dict[str, dict[str, float]]:
    """Each layer's relative output error when only its weight is on each format's grid."""
    was_training = model.training
    model.eval()
    losses: dict[str, dict[str, float]] = {}
    try:
        with torch.no_grad():
            ref = model(inputs).float()
            norm = float((ref**2).sum()) or 1.0
            for layer, name in zip(layers, names, strict=True):
                original = layer.weight.detach().clone()
                losses[name] = {"fp32": 0.0}
                for fmt, grid in grids.items():
                    layer.weight.copy_(grid.fake_quantize(original))
                    out = model(inputs).float()
                    losses[name][fmt] = float(((out - ref) ** 2).sum()) / norm
                layer.weight.copy_(original)
    finally:
        model.train(was_training)
    return losses
