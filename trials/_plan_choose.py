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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from searchspace import TrialParams
from trials._compress import Prunable, prunable_layers
from trials._export import export_onnx
from trials._plan import MIXED_FORMATS, CompressionPlan, LayerSetting
from trials._plan_allocate import (
    Choice,
    JointAllocation,
    LayerOption,
    LayerTable,
    allocate,
    allocate_joint,
)
from trials._plan_widths import (
    LayerShape,
    WidthGroup,
    WidthOption,
    measure_widths,
    predict_bytes,
)
from trials._quantize import DEFAULT_INT8_FORMAT, INT4_GRID, WeightGrid
from trials._quantize_auto import Int8Choice
from trials._settings import TrialSettings
from trials._task import Task, checked_data
from trials._trial_steps import layer_names, layer_width

PLAN_JSON = "plan.json"
SENSITIVITY_VERSION = 2


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
        self.joint: JointAllocation | None = None

    @property
    def per_layer_widths(self) -> bool:
        """A mixed plan with structured pruning: the allocator picks each group's kept width
        (``trials._plan_widths``) together with each layer's format."""
        return self.params.plan == "mixed" and self.params.pruning == "structured"

    def _cache_path(self, count: int) -> Path:
        fmt = (self.int8.fmt if self.int8 is not None else DEFAULT_INT8_FORMAT).name
        seed = self.settings.dense_seed
        key = f"{self.task.name}-{self.baseline_sha256[:16]}-{fmt}-{count}-seed{seed}"
        if self.per_layer_widths:
            key += f"-widths-round{self.settings.pruning_round_to}"
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
        widths: tuple[WidthGroup, ...] = ()
        if self.per_layer_widths:
            widths = measure_widths(
                model,
                self.example,
                batch,
                round_to=self.settings.pruning_round_to,
                what=self.what,
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
            widths=widths,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{id(self)}.tmp")
        tmp.write_text(self.sensitivity.to_json())
        tmp.replace(path)

    def allocate_widths(self, model: nn.Module) -> tuple[dict[str, float], dict[str, float]] | None:
        """For a plan with per-layer widths, on the dense model: each layer's format and each
        group's kept width, allocated jointly under the budget; returns the shares structured
        pruning removes (per layer, per attention module). None for any other plan."""
        if not self.per_layer_widths:
            return None
        assert self.sensitivity is not None, "measure_dense runs before allocate_widths"
        sens = self.sensitivity
        layers = prunable_layers(model)
        names = layer_names(model, layers)
        shapes = [LayerShape.of(n, layer) for n, layer in zip(names, layers, strict=True)]
        groups = {g.name: g for g in sens.widths}
        choices = [
            Choice(
                f"format:{n}",
                tuple((f, sens.losses.get(n, {}).get(f, 0.0)) for f in MIXED_FORMATS),
            )
            for n in names
        ]
        choices += [
            Choice(f"keep:{g.name}", tuple((o.keep, o.loss) for o in g.options))
            for g in sens.widths
        ]
        fixed = sens.dense_file_bytes - 4 * sens.dense_param_count + _outside_bytes(model)

        def option(group: str, keep: object) -> WidthOption:
            return next(o for o in groups[group].options if o.keep == keep)

        def cost(picks: Mapping[str, object]) -> int:
            formats = {n: str(picks[f"format:{n}"]) for n in names}
            chosen = [option(g, picks[f"keep:{g}"]) for g in groups]
            return predict_bytes(shapes, formats, chosen, fixed_bytes=fixed)

        target = int(self.params.budget * sens.dense_file_bytes)
        self.joint = allocate_joint(choices, cost, target_bytes=target)
        shares: tuple[dict[str, float], dict[str, float]] = ({}, {})
        for g in sens.widths:
            keep = float(self.joint.picks[f"keep:{g.name}"])  # type: ignore[arg-type]
            if keep < 1.0:
                shares[g.kind == "heads"][g.name] = 1.0 - keep
        return shares

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
        target = int(self.params.budget * sens.dense_file_bytes)
        if self.joint is not None:
            picks = self.joint.picks
            return CompressionPlan(
                tuple(
                    (name, LayerSetting(str(picks[f"format:{name}"]), keep))
                    for name, keep in zip(names, keeps, strict=True)
                ),
                kind="mixed",
                budget=self.params.budget,
                predicted_bytes=self.joint.predicted_bytes,
                predicted_loss=round(self.joint.predicted_loss, 9),
                target_bytes=target,
            )
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


def _outside_bytes(model: nn.Module) -> int:
    """fp32 bytes of the parameters outside the Conv/Linear layers (norms, embeddings)."""
    inside = {id(p) for layer in prunable_layers(model) for p in layer.parameters(recurse=False)}
    return 4 * sum(p.numel() for p in model.parameters() if id(p) not in inside)


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
        tags["plan_layers"] = ",".join(
            f"{n}={s.format}" + (f"@{s.keep:.3g}" if s.keep < 1 else "") for n, s in plan.layers
        )[:5000]
        tags["plan_keeps"] = plan.keep_histogram()
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
