"""Measure first, then train: the early half of a trial that a search may stop at its rungs.

A trial's size and latency are fixed by its compressed structure (widths, bit-width, export
format), not by fine-tuning; only accuracy moves while it trains. So, before fine-tuning, the
compressed but untrained model is exported and measured exactly as the final artifact will be
(``measure_first``), and after every epoch the trial reports its validation accuracy with those
numbers (``RungHook``). A search's scheduler (``orchestrator._scheduler``) decides from these
reports whether the trial goes on; ``trials`` only reports, through a plain callback.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from trials._compress import (
    GradualPruning,
    Prunable,
    bake,
    prunable_layers,
    round_to_grid,
)
from trials._extra_weights import NO_EXTRA_WEIGHTS, ExtraWeights
from trials._measure import LatencyMeter, measure_onnx
from trials._quantize import WeightGrid
from trials._settings import TrialResult, TrialSettings
from trials._task import Task, checked_data

# ptq rounds the trained weights to the grid of their format: one grid, one per layer (a
# per-layer plan), or none (qat, fp32/fp16).
PtqGrids = WeightGrid | Sequence[WeightGrid | None] | None

EARLY_ONNX = "model.early.onnx"
# Metrics of the early measurement that the final one must reproduce exactly: the artifact's
# bytes on disk depend on its structure only (integer tensors such as int8 zero points are stored
# at a fixed width, ``trials._artifact_clean.fixed_width_tensors``). The tag
# ``early_<name>_match`` and the metric ``early_<name>_drift`` (final - early) show it. (The
# gzip size depends on the weight values; latency is re-measured and noisy.)
EXACT_EARLY = ("size_bytes",)


@dataclass(frozen=True)
class RungReport:
    """What a trial reports after ``epoch`` epochs of fine-tuning (0: before any).

    ``metrics`` holds every metric of the early measurement (size, latency, ...) with
    ``accuracy`` replaced by the accuracy now: at epoch 0 the ONNX accuracy of the untrained
    compressed artifact, after that PyTorch's on the validation split (``torch_accuracy``,
    with the compression's masks and fake quantization applied). ``val_samples`` is the size
    of that split (how precise the accuracy is); ``seconds`` is the trial's time so far.
    ``save(directory)``, after an epoch, writes the trial's state now into ``directory``
    (``trials._rung_state``; call it before the report returns, training goes on after) and
    returns the file: a trial lost after this rung can go on from it.
    """

    epoch: int
    metrics: dict[str, float]
    val_samples: int
    seconds: float
    save: Callable[[Path], Path] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.epoch < 0:
            raise ValueError(f"a rung's epoch must be >= 0, got {self.epoch}")
        if "accuracy" not in self.metrics:
            raise ValueError(f"a rung report needs an accuracy, got {sorted(self.metrics)}")


RungReporter = Callable[[RungReport], None]
"""Called with each :class:`RungReport`; it may raise to stop the trial (the exception
propagates out of ``run_trial``). The orchestrator's trainable turns it into ``tune.report``."""


@dataclass(frozen=True)
class EarlyMeasurement:
    """The compressed, untrained model's artifact as measured by ``measure_onnx``."""

    metrics: dict[str, float]
    tags: dict[str, str]
    seconds: float

    def rung(self, epoch: int, accuracy: float, *, val_samples: int, seconds: float) -> RungReport:
        return RungReport(
            epoch=epoch,
            metrics={**self.metrics, "accuracy": accuracy},
            val_samples=val_samples,
            seconds=seconds,
        )

    def merged_into(self, result: TrialResult) -> TrialResult:
        """``result`` with the early numbers beside the final ones: metrics ``early_<name>``
        and ``early_seconds``, tags ``early_<name>_match`` (true when the final artifact has
        exactly the early value) and metrics ``early_<name>_drift`` (final - early), for
        ``EXACT_EARLY``, so that any drift is visible."""
        metrics = {f"early_{k}": v for k, v in self.metrics.items()}
        metrics["early_seconds"] = self.seconds
        for k in EXACT_EARLY:
            if k in result.metrics and k in self.metrics:
                metrics[f"early_{k}_drift"] = result.metrics[k] - self.metrics[k]
        tags = {
            f"early_{k}_match": str(result.metrics.get(k) == self.metrics.get(k)).lower()
            for k in EXACT_EARLY
        }
        tags["early_latency_converged"] = self.tags.get("latency_converged", "")
        return dataclasses.replace(
            result,
            metrics={**result.metrics, **metrics},
            tags={**result.tags, **tags},
        )


def measure_first(
    model: nn.Module,
    *,
    unstructured_target: float,
    ptq_grid: PtqGrids,
    export: Callable[[nn.Module, Path], dict[str, str]],
    task: Task,
    settings: TrialSettings,
    meter: LatencyMeter | None,
    extra_weights: ExtraWeights = NO_EXTRA_WEIGHTS,
) -> EarlyMeasurement:
    """Export and measure a copy of ``model`` as it would be deployed if it were not trained.

    ``model`` is set up for fine-tuning (structured pruning done; masks and fake quantization
    attached). The copy gets the final form of what training would do to its structure:
    gradual unstructured pruning's target mask now (``unstructured_target``; 0 for none),
    the masks and fake quantization baked, ptq's weights rounded to ``ptq_grid``; then
    ``export(copy, path)`` writes it as the final artifact will be written, and
    ``measure_onnx`` measures it with the trial's meter. The early file is removed after.
    """
    start = time.perf_counter()
    twin = _twin(model)
    layers = prunable_layers(twin)
    masks = [torch.ones_like(layer.weight, dtype=torch.bool) for layer in layers]
    if unstructured_target > 0:
        masks = GradualPruning(layers, unstructured_target, 0).finish()
    for layer in layers:
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    bake(layers, masks)
    _round(layers, ptq_grid)
    extra_weights.bake(twin)
    path = settings.work_dir / EARLY_ONNX
    try:
        export(twin, path)
        metrics, tags = measure_onnx(path, task, settings, meter=meter)
    finally:
        path.unlink(missing_ok=True)
    return EarlyMeasurement(metrics=metrics, tags=tags, seconds=time.perf_counter() - start)


def _twin(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with the same parametrizations (copies of them): the layers'
    weights and the extra weights (``trials._extra_weights``).

    A parametrized module cannot be deep-copied (its class is made on the fly), so each
    parametrization is taken off for the copy and put back: the same ``original`` parameter
    and the same parametrization object, so training and a pruning schedule that holds the
    layers see no difference."""
    held = [(n, m) for n, m in model.named_modules() if parametrize.is_parametrized(m)]
    taken: list[tuple[str, nn.Module, str, list[nn.Module]]] = []
    try:
        for name, module in held:
            for tensor in list(module.parametrizations):  # type: ignore[union-attr]
                chain = list(module.parametrizations[tensor])  # type: ignore[index]
                parametrize.remove_parametrizations(module, tensor, leave_parametrized=False)
                taken.append((name, module, tensor, chain))
        twin = copy.deepcopy(model)
    finally:
        for _, module, tensor, chain in taken:
            for p in chain:
                parametrize.register_parametrization(module, tensor, p)
    for name, _, tensor, chain in taken:
        for p in chain:
            parametrize.register_parametrization(twin.get_submodule(name), tensor, copy.deepcopy(p))
    return twin


class RungHook:
    """``fit``'s ``on_epoch``: after each epoch, report PyTorch's validation accuracy with the
    early measurement to ``report``.

    With ``ptq_grid`` (ptq fine-tunes in float and rounds the weights after), the accuracy is
    that of a copy with its weights rounded to the grid, as the trial's final model will be:
    the last rung then reports the final ``torch_accuracy``. ``saver`` becomes each report's
    ``save``."""

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        early: EarlyMeasurement,
        report: RungReporter,
        *,
        start: float,
        ptq_grid: PtqGrids = None,
        saver: Callable[[Path], Path] | None = None,
    ) -> None:
        self.model = model
        self.saver = saver
        self.task = task
        self.early = early
        self.report = report
        self.start = start
        self.ptq_grid = ptq_grid
        self.x_val, self.y_val = checked_data(task, "val")

    def before_training(self) -> None:
        """Rung 0: the untrained artifact's ONNX accuracy."""
        self.report(
            self.early.rung(
                0,
                self.early.metrics["accuracy"],
                val_samples=len(self.x_val),
                seconds=time.perf_counter() - self.start,
            )
        )

    def __call__(self, epoch: int) -> None:
        accuracy = float(self.task.metric(self._outputs(), self.y_val.numpy()))
        rung = self.early.rung(
            epoch,
            accuracy,
            val_samples=len(self.x_val),
            seconds=time.perf_counter() - self.start,
        )
        metrics = {**rung.metrics, "torch_accuracy": accuracy}
        self.report(dataclasses.replace(rung, metrics=metrics, save=self.saver))

    def _outputs(self, batch_size: int = 256) -> np.ndarray:
        model = self.model if self.ptq_grid is None else self._rounded()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        was_training = model.training
        model.eval()
        outputs = []
        try:
            with torch.no_grad():
                for first in range(0, len(self.x_val), batch_size):
                    x = self.x_val[first : first + batch_size].to(device)
                    outputs.append(model(x).float().cpu().numpy())
        finally:
            model.train(was_training)
        return np.concatenate(outputs)

    def _rounded(self) -> nn.Module:
        """A copy of the model with its masks baked and its weights rounded to ``ptq_grid``."""
        assert self.ptq_grid is not None
        twin = _twin(self.model)
        layers = prunable_layers(twin)
        for layer in layers:
            if parametrize.is_parametrized(layer, "weight"):
                parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
        _round(layers, self.ptq_grid)
        return twin


def _round(layers: list[Prunable], grids: PtqGrids) -> None:
    """Round each layer's weight to its grid: one grid for all, or one per layer (a per-layer
    plan; None leaves a layer float)."""
    if grids is None:
        return
    per = [grids] * len(layers) if isinstance(grids, WeightGrid) else list(grids)
    for layer, grid in zip(layers, per, strict=True):
        if grid is not None:
            round_to_grid([layer], grid)
