"""Steps of a trial that read its plan: structured pruning, fake quantization per layer,
post-training rounding, the sparsity check, the pruning log and tags."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from searchspace import TrialParams
from trials._compress import GradualPruning, MaskedFakeQuant, Prunable, Weighted, zero_weights
from trials._errors import PruningError
from trials._extra_weights import NO_EXTRA_WEIGHTS, ExtraWeights
from trials._measure import LatencyMeter
from trials._plan import CompressionPlan
from trials._quantize import WeightGrid
from trials._settings import PruningLog, TrialSettings
from trials._structured import StructuredPruning, prune_structured
from trials._train import steps_per_epoch


def layer_names(model: nn.Module, layers: Sequence[Prunable]) -> list[str]:
    """The module names of ``layers`` in ``model`` (the keys of a plan)."""
    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(layer)] for layer in layers]


def layer_width(layer: Prunable) -> int:
    return int(layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels)


def structured_step(
    model: nn.Module,
    example: torch.Tensor,
    params: TrialParams,
    settings: TrialSettings,
    tags: dict[str, str],
    *,
    what: str,
    shares: tuple[dict[str, float], dict[str, float]] | None = None,
) -> StructuredPruning | None:
    """Structured pruning at ``params.sparsity`` (uniform per layer) when ``params.pruning`` is
    structured, or at the per-layer ``shares`` (removed per layer, per attention module) a
    mixed plan's allocator chose; its tags go into ``tags``."""
    if params.pruning != "structured":
        return None
    structured = prune_structured(
        model,
        example,
        params.sparsity,
        what=what,
        round_to=settings.pruning_round_to,
        layer_ratios=None if shares is None else shares[0],
        head_ratios=None if shares is None else shares[1],
    )
    tags["pruning_widths"] = ",".join(str(w) for w in structured.widths)
    tags["pruning_round_to"] = str(settings.pruning_round_to)
    if shares is None and params.sparsity > 0 and structured.removed == 0:
        tags["pruning_effect"] = (
            f"none: ratio {params.sparsity:g} removes no unit at round_to "
            f"{settings.pruning_round_to}"
        )
    if structured.heads:
        tags["pruning_heads"] = structured.attention_tag()
    return structured


def attach_grids(
    layers: Sequence[Weighted], masks: Sequence[torch.Tensor], grids: Sequence[WeightGrid | None]
) -> None:
    """Parametrize each layer's weight with its mask and fake quantization on its own grid
    (None: the mask only, training in float)."""
    for layer, mask, grid in zip(layers, masks, grids, strict=True):
        parametrize.register_parametrization(layer, "weight", MaskedFakeQuant(mask, grid))


def round_to_grids(layers: Sequence[Weighted], grids: Sequence[WeightGrid | None]) -> None:
    """Round each plain weight to its grid in place (ptq's weight half); None leaves it."""
    with torch.no_grad():
        for layer, grid in zip(layers, grids, strict=True):
            if grid is not None:
                layer.weight.copy_(grid.fake_quantize(layer.weight))


def plan_packed_bytes(
    model: nn.Module,
    layers: Sequence[Prunable],
    plan: CompressionPlan,
    extra_weights: ExtraWeights = NO_EXTRA_WEIGHTS,
) -> int:
    """Analytic size of the weights packed as ``plan`` says: each Conv/Linear weight at its
    bits / 8 bytes plus one fp32 scale per output channel (none at 16 and 32 bits), and so the
    ``extra_weights`` a simulated width puts on its grid; every other parameter fp32. No credit
    for sparsity and no format overhead."""
    named = extra_weights.names()
    quantized = {id(layer.weight) for layer in layers}
    quantized |= {id(p) for name, p in model.named_parameters() if name in named}
    size = extra_weights.packed_bytes(model)
    for layer, bits in zip(layers, (s.bits for _, s in plan.layers), strict=True):
        size += math.ceil(layer.weight.numel() * bits / 8)
        if bits <= 8:
            size += 4 * layer.weight.shape[0]
    size += sum(4 * p.numel() for p in model.parameters() if id(p) not in quantized)
    return size


def pruning_effect(params: TrialParams, achieved: float) -> dict[str, str]:
    """The tag ``pruning_effect`` when unstructured pruning left under half the requested
    sparsity in the artifact: it prunes Conv/Linear weights only, and the model keeps most of
    its weights elsewhere (a GRU, an embedding, attention's in_proj)."""
    if params.pruning != "unstructured" or params.sparsity <= 0:
        return {}
    if achieved >= 0.5 * params.sparsity:
        return {}
    return {
        "pruning_effect": (
            f"partial: sparsity {params.sparsity:g} requested, {achieved:.3f} of the artifact's "
            "weights are zero; only Conv/Linear weights are pruned"
        )
    }


def step_hook(
    schedule: GradualPruning | None, meter: LatencyMeter | None
) -> Callable[[int, int], None] | None:
    """Before each training step: the pruning schedule, then the meter's pause point (where a
    latency measurement on this machine may hold the trial)."""
    if meter is None:
        return schedule

    def hook(step: int, total_steps: int) -> None:
        if schedule is not None:
            schedule(step, total_steps)
        meter.pause_point()

    return hook


def pruning_log(
    params: TrialParams,
    settings: TrialSettings,
    n_train: int,
    schedule: GradualPruning | None,
    structured: StructuredPruning | None,
) -> PruningLog:
    log = PruningLog(scheme=params.pruning, target=params.sparsity)
    if schedule is not None:
        log = dataclasses.replace(
            log,
            total_steps=settings.epochs * steps_per_epoch(n_train, params.batch_size),
            ramp_steps=schedule.ramp_steps,
            every=schedule.every,
            history=tuple(schedule.history),
        )
    if structured is not None:
        log = dataclasses.replace(log, widths=structured.widths)
    return log


def check_sparsity(
    layers: list[Prunable], masks: list[torch.Tensor], requested: float, *, what: str
) -> None:
    pruned = sum(int((~m).sum()) for m in masks)
    zeros, total = zero_weights(layers)
    if zeros < pruned:
        raise PruningError(
            f"{what}: the achieved weight sparsity must be at least the requested {requested:g}, "
            f"but only {zeros} of {total} weights are zero ({pruned} pruned). "
            "Fix: report this as a slimtune bug."
        )
