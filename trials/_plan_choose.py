"""How a trial gets its plan: uniform from its knobs, or mixed from the allocator over the
layers' measured sensitivity and their predicted bytes.

Sensitivity (``measure_sensitivity``) is measured once per search and cached in ``cache_dir``
next to the dense baseline: for each Conv/Linear layer and each of int8 and int4, the relative
output error ``|f_q(x) - f(x)|^2 / |f(x)|^2`` of the dense model on a calibration batch when
only that layer's weight is rounded to the format's grid (the PyTorch model, weights only:
int8 activation rounding is not in it). The dense fp32 artifact's bytes are measured then too
(exported once); a layer's bytes at each format are exact from its parameter counts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from searchspace import TrialParams
from trials._compress import Prunable, prunable_layers
from trials._export import export_onnx
from trials._plan import MIXED_FORMATS, CompressionPlan, LayerSetting
from trials._plan_allocate import LayerOption, LayerTable, allocate
from trials._quantize import DEFAULT_INT8_FORMAT, INT4_GRID, WeightGrid
from trials._quantize_auto import Int8Choice
from trials._quantize_int4 import _block_size
from trials._settings import TrialSettings
from trials._task import Task, checked_data
from trials._trial_steps import layer_names, layer_width

PLAN_JSON = "plan.json"
SENSITIVITY_VERSION = 1
# Bytes an int8 / int4 layer adds to the file beyond its weight, scales and zero points: the
# QDQ nodes, the activation scale and zero point, the int32 bias' scale (int8); the node (int4).
_NODE_BYTES = {"fp32": 0, "int8": 1000, "int4": 120}


@dataclass(frozen=True)
class Sensitivity:
    """What ``measure_sensitivity`` found for one dense model: each layer's loss per format
    (fp32 is 0) and the dense fp32 artifact's bytes and parameter count."""

    losses: dict[str, dict[str, float]]
    dense_file_bytes: int
    dense_param_count: int

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": SENSITIVITY_VERSION,
                "losses": self.losses,
                "dense_file_bytes": self.dense_file_bytes,
                "dense_param_count": self.dense_param_count,
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
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def layer_bytes(layer: Prunable, fmt: str) -> int:
    """Predicted bytes of ``layer``'s weight (and bias) in an artifact storing it as ``fmt``."""
    weight = layer.weight
    n, out = weight.numel(), int(weight.shape[0])
    bias = 0 if layer.bias is None else 4 * layer.bias.numel()
    if fmt == "fp32":
        return 4 * n + bias
    if fmt == "int8":  # int8 weight, fp32 scale + int8 zero point per channel, int32 bias
        return n + 5 * out + (2 * bias if bias else 0) + _NODE_BYTES["int8"]
    if fmt == "int4":
        if isinstance(layer, nn.Linear):  # MatMulNBits: blocks along K, one scale per block
            k = layer.in_features
            block = _block_size(k)
            blocks = -(-k // block)
            return out * blocks * (block // 2 + 4) + bias + _NODE_BYTES["int4"]
        return math.ceil(n / 2) + 4 * out + bias + _NODE_BYTES["int4"]
    raise ValueError(f"a mixed plan's formats are {list(MIXED_FORMATS)}, not {fmt!r}")


def measure_sensitivity(
    model: nn.Module,
    layers: Sequence[Prunable],
    names: Sequence[str],
    grids: dict[str, WeightGrid],
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


class PlanChooser:
    """Makes a trial's plan. ``measure_dense`` (on the dense model, before structured pruning)
    loads or measures the sensitivity of a mixed trial; ``choose`` (after pruning) returns the
    plan."""

    def __init__(
        self,
        task: Task,
        params: TrialParams,
        settings: TrialSettings,
        baseline_sha256: str,
        int8: Int8Choice | None,
        inputs: np.ndarray,
        example: torch.Tensor,
        *,
        what: str,
    ) -> None:
        self.task = task
        self.params = params
        self.settings = settings
        self.baseline_sha256 = baseline_sha256
        self.int8 = int8
        self.example = example
        self.what = what
        self.sensitivity: Sensitivity | None = None

    def _cache_path(self, count: int) -> Path:
        fmt = (self.int8.fmt if self.int8 is not None else DEFAULT_INT8_FORMAT).name
        seed = self.settings.dense_seed
        key = f"{self.task.name}-{self.baseline_sha256[:16]}-{fmt}-{count}-seed{seed}"
        return self.settings.cache_dir / "sensitivity" / f"{key}.json"

    def measure_dense(self, model: nn.Module) -> None:
        if self.params.plan != "mixed":
            return
        x_train, _ = checked_data(self.task, "train")
        # The search's calibration batch (its baseline seed), so that every trial shares it.
        generator = torch.Generator().manual_seed(self.settings.dense_seed)
        count = min(self.settings.calibration_samples, len(x_train))
        batch = x_train[torch.randperm(len(x_train), generator=generator)[:count]].float()
        path = self._cache_path(count)
        cached = Sensitivity.from_json(path.read_text()) if path.exists() else None
        if cached is not None:
            self.sensitivity = cached
            return
        layers = prunable_layers(model)
        fmt = self.int8.fmt if self.int8 is not None else DEFAULT_INT8_FORMAT
        losses = measure_sensitivity(
            model, layers, layer_names(model, layers), {"int8": fmt.grid, "int4": INT4_GRID}, batch
        )
        dense_path = self.settings.work_dir / "dense-for-plan.onnx"
        try:
            export_onnx(model, self.example, dense_path, what=self.what)
            dense_bytes = dense_path.stat().st_size
        finally:
            dense_path.unlink(missing_ok=True)
        self.sensitivity = Sensitivity(
            losses=losses,
            dense_file_bytes=dense_bytes,
            dense_param_count=sum(p.numel() for p in model.parameters()),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{id(self)}.tmp")
        tmp.write_text(self.sensitivity.to_json())
        tmp.replace(path)

    def choose(
        self, model: nn.Module, layers: Sequence[Prunable], dense_widths: Sequence[int]
    ) -> CompressionPlan:
        names = layer_names(model, layers)
        keeps = [
            round(layer_width(layer) / dense, 6)
            for layer, dense in zip(layers, dense_widths, strict=True)
        ]
        if self.params.plan != "mixed":
            return CompressionPlan.uniform(names, self.params.bits, keep=keeps)
        assert self.sensitivity is not None, "measure_dense runs before choose"
        sens = self.sensitivity
        overhead = sens.dense_file_bytes - 4 * sens.dense_param_count
        in_layers = {id(p) for layer in layers for p in layer.parameters(recurse=False)}
        others = 4 * sum(p.numel() for p in model.parameters() if id(p) not in in_layers)
        tables = [
            LayerTable(
                name,
                tuple(
                    LayerOption(
                        fmt, sens.losses.get(name, {}).get(fmt, 0.0), layer_bytes(layer, fmt)
                    )
                    for fmt in MIXED_FORMATS
                ),
            )
            for layer, name in zip(layers, names, strict=True)
        ]
        target = int(self.params.budget * sens.dense_file_bytes)
        result = allocate(tables, fixed_bytes=overhead + others, target_bytes=target)
        return CompressionPlan(
            tuple(
                (name, LayerSetting(result.formats[name], keep))
                for name, keep in zip(names, keeps, strict=True)
            ),
            kind="mixed",
            budget=self.params.budget,
            predicted_bytes=result.predicted_bytes,
            predicted_loss=round(result.predicted_loss, 9),
            target_bytes=target,
        )


def plan_tags(plan: CompressionPlan) -> dict[str, str]:
    """The tags of a plan: its kind, the histogram of formats and, for a mixed plan, the budget,
    its bytes, the predicted bytes, whether the prediction meets the budget, each layer's
    format."""
    tags = {"plan": plan.kind, "plan_formats": plan.histogram()}
    if plan.kind == "mixed":
        tags["plan_budget"] = f"{plan.budget:g}"
        tags["plan_predicted_bytes"] = str(plan.predicted_bytes)
        tags["plan_target_bytes"] = str(plan.target_bytes)
        if plan.predicted_bytes is not None and plan.target_bytes is not None:
            met = plan.predicted_bytes <= plan.target_bytes
            tags["plan_budget_met"] = (
                "true"
                if met
                else "false: even the cheapest format of every layer is predicted over budget"
            )
        tags["plan_layers"] = ",".join(f"{n}={s.format}" for n, s in plan.layers)[:5000]
    return tags


def measured_plan_tags(plan: CompressionPlan, size_bytes: float) -> dict[str, str]:
    """The measured cost next to the predicted one, and the prediction's error."""
    if plan.predicted_bytes is None:
        return {}
    error = (plan.predicted_bytes - size_bytes) / size_bytes if size_bytes else 0.0
    return {
        "plan_measured_bytes": str(int(size_bytes)),
        "plan_prediction_error": f"{error:+.3f}",
    }


def write_plan(plan: CompressionPlan, work_dir: Path) -> Path:
    """``plan.json`` next to the trial's ONNX file (a search logs it as ``trial/plan.json``)."""
    path = work_dir / PLAN_JSON
    path.write_text(plan.to_json())
    return path
