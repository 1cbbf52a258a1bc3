"""How a trial gets its plan: uniform from its knobs, or mixed from the allocator over the
layers' measured sensitivity (``trials._plan_sensitivity``) and their predicted cost: bytes
(exact from the shapes) under a size budget, milliseconds (from the latency table measured in
ONNX Runtime, ``trials._plan_latency``) under a latency budget."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from searchspace import ConfigError, TrialParams
from trials._compress import Prunable, prunable_layers
from trials._export import export_onnx
from trials._files import safe_name, write_text_atomic
from trials._measure import InlineMeter, LatencyMeter, latency_plan
from trials._plan import MIXED_FORMATS, CompressionPlan, LayerSetting
from trials._plan_allocate import (
    Allocation,
    Choice,
    JointAllocation,
    LayerOption,
    LayerTable,
    allocate,
    allocate_joint,
)
from trials._plan_latency import LatencyTable, TableJob, measure_latency_table
from trials._plan_sensitivity import HALF, Sensitivity, layer_bytes, measure_sensitivity
from trials._plan_widths import (
    LayerShape,
    WidthGroup,
    WidthOption,
    kept_work,
    measure_widths,
    predict_bytes,
)
from trials._quantize import DEFAULT_INT8_FORMAT, INT4_GRID, Int8Format
from trials._quantize_auto import Int8Choice
from trials._settings import TrialSettings
from trials._task import Task, checked_data
from trials._trial_steps import layer_names, layer_width


class PlanChooser:
    """Makes a trial's plan. ``measure_dense`` (on the dense model, before structured pruning)
    loads or measures the sensitivity of a mixed trial (and, for a latency budget, the latency
    table: ``trials._plan_latency``); ``choose`` (after pruning) returns the plan."""

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
        meter: LatencyMeter | None = None,
    ) -> None:
        self.task = task
        self.params = params
        self.settings = settings
        self.baseline_sha256 = baseline_sha256
        self.int8 = int8
        self.example = example
        self.what = what
        self.meter = meter or InlineMeter()
        self.sensitivity: Sensitivity | None = None
        self.latency: LatencyTable | None = None
        self.joint: JointAllocation | None = None
        # The joint allocation's predicted bytes and ms, on the model it allocated for.
        self._predicted: tuple[int, float | None] = (0, None)

    @property
    def per_layer_widths(self) -> bool:
        """A mixed plan with structured pruning: the allocator picks each group's kept width
        (``trials._plan_widths``) together with each layer's format."""
        return self.params.plan == "mixed" and self.params.pruning == "structured"

    @property
    def _fmt(self) -> Int8Format:
        return self.int8.fmt if self.int8 is not None else DEFAULT_INT8_FORMAT

    def _cache_path(self, count: int) -> Path:
        seed = self.settings.dense_seed
        key = f"{self.task.name}-{self.baseline_sha256[:16]}-{self._fmt.name}-{count}-seed{seed}"
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
        if self.params.budget_metric == "latency":
            self.latency = self._latency_table(model, batch, path)
        cached = Sensitivity.from_json(path.read_text()) if path.exists() else None
        if cached is not None:
            self.sensitivity = cached
            return
        layers = prunable_layers(model)
        losses = measure_sensitivity(
            model,
            layers,
            layer_names(model, layers),
            {"fp16": HALF, "int8": self._fmt.grid, "int4": INT4_GRID},
            batch,
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
        write_text_atomic(path, self.sensitivity.to_json())

    def _latency_table(self, model: nn.Module, batch: torch.Tensor, path: Path) -> LatencyTable:
        """The table the settings give (a rebuild: the record's), else the one cached for this
        machine and thread count, else measured now by the meter and cached."""
        if self.settings.plan_latency is not None:
            given = LatencyTable.from_dict(self.settings.plan_latency)
            if given is None:
                raise ConfigError(
                    field="plan_latency",
                    value=str(self.settings.plan_latency)[:80],
                    rule="it must be a latency table as a trial's plan.json records it",
                    fix="rebuild from an unmodified record, or leave plan_latency out to measure",
                    source="TrialSettings",
                )
            return given
        node = socket.gethostname()
        where = safe_name(node)[:64]
        threads = self.settings.latency_threads
        cache = path.with_name(f"{path.stem}-latency-{where}-t{threads}.json")
        if cache.exists():
            try:
                cached = LatencyTable.from_dict(json.loads(cache.read_text()))
            except ValueError:
                cached = None
            if cached is not None and cached.node == node and cached.threads == threads:
                return cached
        layers = prunable_layers(model)
        job = TableJob(
            meter=self.meter,
            plan=latency_plan(self.settings),
            fmt=self._fmt,
            work_dir=self.settings.work_dir,
            node=node,
            what=self.what,
        )
        table = measure_latency_table(
            model, layer_names(model, layers), layers, self.example, batch, job
        )
        write_text_atomic(cache, json.dumps(table.to_dict(), indent=1, sort_keys=True))
        return table

    def _costs(
        self, model: nn.Module
    ) -> tuple[list[str], Callable[[Mapping[str, object]], int], Callable[..., float]]:
        """The layer names, and the predicted bytes and milliseconds of a set of picks
        (``format:<layer>`` and ``keep:<group>``) on ``model`` as it is now."""
        assert self.sensitivity is not None, "measure_dense runs first"
        sens = self.sensitivity
        layers = prunable_layers(model)
        names = layer_names(model, layers)
        shapes = [LayerShape.of(n, layer) for n, layer in zip(names, layers, strict=True)]
        fixed = sens.dense_file_bytes - 4 * sens.dense_param_count + _outside_bytes(model)
        groups = {g.name: g for g in sens.widths}

        def chosen(picks: Mapping[str, object]) -> list[WidthOption]:
            return [
                next(o for o in g.options if o.keep == picks.get(f"keep:{g.name}", 1.0))
                for g in groups.values()
            ]

        def formats(picks: Mapping[str, object]) -> dict[str, str]:
            return {n: str(picks[f"format:{n}"]) for n in names}

        def size(picks: Mapping[str, object]) -> int:
            return predict_bytes(shapes, formats(picks), chosen(picks), fixed_bytes=fixed)

        def latency(picks: Mapping[str, object]) -> float:
            assert self.latency is not None
            work, outputs = kept_work(shapes, chosen(picks))
            return self.latency.predict(formats(picks), work, outputs)

        return names, size, latency

    def _allocate_joint(self, model: nn.Module, groups: Sequence[WidthGroup]) -> None:
        """Formats (and the kept widths of ``groups``) by the joint greedy, under the budget's
        metric."""
        assert self.sensitivity is not None, "measure_dense runs first"
        sens = self.sensitivity
        names, size, latency = self._costs(model)
        choices = [
            Choice(
                f"format:{n}",
                tuple((f, sens.losses.get(n, {}).get(f, 0.0)) for f in MIXED_FORMATS),
            )
            for n in names
        ]
        choices += [
            Choice(f"keep:{g.name}", tuple((o.keep, o.loss) for o in g.options)) for g in groups
        ]
        if self.latency is not None:
            target = self.params.budget * self.latency.dense_ms
            self.joint = allocate_joint(choices, latency, target=target)
        else:
            target = int(self.params.budget * sens.dense_file_bytes)
            self.joint = allocate_joint(choices, size, target=target)
        picks = self.joint.picks
        self._predicted = (size(picks), latency(picks) if self.latency is not None else None)

    def allocate_widths(self, model: nn.Module) -> tuple[dict[str, float], dict[str, float]] | None:
        """For a plan with per-layer widths, on the dense model: each layer's format and each
        group's kept width, allocated jointly under the budget; returns the shares structured
        pruning removes (per layer, per attention module). None for any other plan."""
        if not self.per_layer_widths:
            return None
        assert self.sensitivity is not None, "measure_dense runs before allocate_widths"
        self._allocate_joint(model, self.sensitivity.widths)
        assert self.joint is not None
        shares: tuple[dict[str, float], dict[str, float]] = ({}, {})
        for g in self.sensitivity.widths:
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
        if self.joint is None and self.latency is not None:
            self._allocate_joint(model, ())
        if self.joint is not None:
            picks = self.joint.picks
            formats = {name: str(picks[f"format:{name}"]) for name in names}
            predicted_bytes, predicted_ms = self._predicted
            loss = self.joint.predicted_loss
        else:
            result = self._allocate(model, layers, names)
            formats, predicted_bytes = dict(result.formats), result.predicted_bytes
            predicted_ms, loss = None, result.predicted_loss
        latency = self.latency  # measured for a latency budget only
        return CompressionPlan(
            tuple(
                (name, LayerSetting(formats[name], keep))
                for name, keep in zip(names, keeps, strict=True)
            ),
            kind="mixed",
            budget=self.params.budget,
            predicted_bytes=predicted_bytes,
            predicted_loss=round(loss, 9),
            target_bytes=(
                None if latency is not None else int(self.params.budget * sens.dense_file_bytes)
            ),
            budget_metric=self.params.budget_metric,
            predicted_ms=None if predicted_ms is None else round(predicted_ms, 6),
            target_ms=None if latency is None else round(self.params.budget * latency.dense_ms, 6),
            latency_table=None if latency is None else latency.to_dict(),
        )

    def _allocate(
        self, model: nn.Module, layers: Sequence[Prunable], names: Sequence[str]
    ) -> Allocation:
        """Formats under a size budget, layer by layer (``allocate``: bytes add up)."""
        assert self.sensitivity is not None
        sens = self.sensitivity
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
        overhead = sens.dense_file_bytes - 4 * sens.dense_param_count
        target = int(self.params.budget * sens.dense_file_bytes)
        return allocate(tables, fixed_bytes=overhead + _outside_bytes(model), target_bytes=target)


def _outside_bytes(model: nn.Module) -> int:
    """fp32 bytes of the parameters outside the Conv/Linear layers (norms, embeddings)."""
    inside = {id(p) for layer in prunable_layers(model) for p in layer.parameters(recurse=False)}
    return 4 * sum(p.numel() for p in model.parameters() if id(p) not in inside)
