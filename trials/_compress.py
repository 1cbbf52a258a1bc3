"""Global magnitude pruning (one-shot, or gradual on Zhu & Gupta's cubic schedule) and
per-channel fake quantization of Conv/Linear weights."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from trials._errors import PruningError
from trials._quantize import WeightGrid, weight_grid

# Layers whose weights are pruned and quantized (per output channel, axis 0).
Prunable = nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear


def prunable_layers(model: nn.Module) -> list[Prunable]:
    """The model's Conv/Linear layers, in module order."""
    return [
        m for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear)
    ]


def global_magnitude_masks(layers: list[Prunable], sparsity: float) -> list[Tensor]:
    """Keep-masks that zero the ``sparsity`` fraction of smallest-|w| weights over all layers
    together (global L1). Exactly ``round(sparsity * n)`` weights are pruned; ties are broken by
    position, so the masks are deterministic."""
    return magnitude_masks([layer.weight.detach() for layer in layers], sparsity)


def magnitude_masks(weights: list[Tensor], sparsity: float) -> list[Tensor]:
    """Keep-masks for ``weights`` pruning the ``sparsity`` fraction of smallest |w| over all of
    them together (see ``global_magnitude_masks``)."""
    scores = torch.cat([w.abs().flatten() for w in weights])
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    n_pruned = round(sparsity * scores.numel())
    if n_pruned > 0:
        keep[torch.argsort(scores, stable=True)[:n_pruned]] = False
    masks = []
    first = 0
    for w in weights:
        masks.append(keep[first : first + w.numel()].view_as(w).clone())
        first += w.numel()
    return masks


def fake_quantize(weight: Tensor, bits: int | WeightGrid) -> Tensor:
    """Symmetric fake quantization on a grid (``WeightGrid``), or on the default grid of
    ``bits`` (per output channel, ``[-q, q]`` with ``q = 2**(bits-1) - 1``, scale
    ``max|w| / q``); the gradient passes straight through."""
    grid = bits if isinstance(bits, WeightGrid) else weight_grid(bits)
    return grid.fake_quantize(weight)


class MaskedFakeQuant(nn.Module):
    """Parametrization of a weight: ``grid.fake_quantize(weight * mask)``, or only the mask when
    ``grid`` is None (fp32 and fp16 train in fp32, and so does post-training quantization).
    Pruned weights stay zero through training and quantization."""

    mask: Tensor

    def __init__(self, mask: Tensor, grid: WeightGrid | None) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.float32))
        self.grid = grid

    def forward(self, weight: Tensor) -> Tensor:
        weight = weight * self.mask
        if self.grid is not None:
            weight = self.grid.fake_quantize(weight)
        return weight


def attach(
    layers: list[Prunable],
    masks: list[Tensor],
    bits: int | None = None,
    *,
    grid: WeightGrid | None = None,
) -> None:
    """Parametrize each layer's weight with its mask and fake quantization on ``grid`` (default:
    the grid of ``bits`` when ``bits <= 8``; none when both leave it open: training in float)."""
    if grid is None and bits is not None and bits <= 8:
        grid = weight_grid(bits)
    for layer, mask in zip(layers, masks, strict=True):
        parametrize.register_parametrization(layer, "weight", MaskedFakeQuant(mask, grid))


def round_to_grid(layers: list[Prunable], grid: WeightGrid) -> None:
    """Round each (plain, unparametrized) weight to ``grid`` in place: the weight half of
    post-training quantization, done here so the PyTorch model holds exactly the weights the
    exported artifact stores. Zeros stay zero (the grid is symmetric)."""
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(grid.fake_quantize(layer.weight))


def cubic_sparsity(step: int, ramp_steps: int, target: float) -> float:
    """Zhu & Gupta (2017): ``target * (1 - (1 - step / ramp_steps) ** 3)`` for ``step`` in
    ``[0, ramp_steps]``, ``target`` after (and at once when ``ramp_steps`` is 0)."""
    if ramp_steps <= 0 or step >= ramp_steps:
        return target
    return target * (1.0 - (1.0 - max(step, 0) / ramp_steps) ** 3)


class GradualPruning:
    """Gradual global magnitude pruning over the fine-tuning steps (Zhu & Gupta's cubic
    schedule), for layers already parametrized by ``attach``.

    Sparsity ramps from 0 at step 0 to ``target`` at ``ramp_steps = floor(ramp_fraction *
    total_steps)``; the masks are recomputed every ``every = ceil(ramp_steps / updates)`` steps
    and at ``ramp_steps``, on the masked weights (so a pruned weight stays pruned); after that the
    final mask is fixed and the remaining steps fine-tune the survivors. Call it with the step
    index before each optimizer step. ``history`` lists ``(step, sparsity)`` of each update.
    """

    def __init__(
        self,
        layers: list[Prunable],
        target: float,
        total_steps: int,
        *,
        ramp_fraction: float = 2 / 3,
        updates: int = 10,
    ) -> None:
        self.layers = layers
        self.target = target
        self.ramp_steps = math.floor(ramp_fraction * max(total_steps, 0))
        self.every = max(1, math.ceil(self.ramp_steps / max(updates, 1)))
        self.history: list[tuple[int, float]] = []

    def __call__(self, step: int, total_steps: int) -> None:
        if step > self.ramp_steps:
            return
        if step % self.every == 0 or step == self.ramp_steps:
            self.apply(step, cubic_sparsity(step, self.ramp_steps, self.target))

    def apply(self, step: int, sparsity: float) -> None:
        """Recompute the masks for ``sparsity`` on the currently masked weights."""
        holders = [_holder(layer) for layer in self.layers]
        weights = [
            (layer.parametrizations.weight.original.detach() * holder.mask)  # type: ignore[union-attr,operator]
            for layer, holder in zip(self.layers, holders, strict=True)
        ]
        for holder, mask in zip(holders, magnitude_masks(weights, sparsity), strict=True):
            holder.mask.copy_(mask.to(holder.mask.dtype))
        self.history.append((step, sparsity))

    def finish(self) -> list[Tensor]:
        """Fix the final mask at the target sparsity (applying it now if the schedule has not
        reached it, e.g. with no fine-tuning steps); return the keep-masks."""
        if not self.history or self.history[-1][1] != self.target:
            self.apply(self.history[-1][0] + 1 if self.history else 0, self.target)
        return [_holder(layer).mask.bool().clone() for layer in self.layers]


def _holder(layer: Prunable) -> MaskedFakeQuant:
    holder = layer.parametrizations.weight[0]  # type: ignore[union-attr,index]
    if not isinstance(holder, MaskedFakeQuant):
        raise PruningError(
            "gradual pruning needs layers parametrized by MaskedFakeQuant, but a layer has "
            f"{type(holder).__name__}. Fix: call attach() first (a slimtune bug if you did not)."
        )
    return holder


def bake(layers: list[Prunable], masks: list[Tensor]) -> None:
    """Make pruning and quantization permanent (plain weights again) and check that every
    pruned weight is zero."""
    for layer in layers:
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    for i, (layer, mask) in enumerate(zip(layers, masks, strict=True)):
        leaked = int(torch.count_nonzero(layer.weight.detach()[~mask]))
        if leaked:
            raise PruningError(
                f"pruned weights must stay zero after fine-tuning, but layer {i} "
                f"({type(layer).__name__}) has {leaked} non-zero pruned weights. "
                "Fix: report this as a slimtune bug (the mask is applied in the parametrization)."
            )


def zero_weights(layers: list[Prunable]) -> tuple[int, int]:
    """(exactly-zero weights, all weights) over the Conv/Linear weights."""
    total = sum(layer.weight.numel() for layer in layers)
    nonzero = sum(int(torch.count_nonzero(layer.weight.detach())) for layer in layers)
    return total - nonzero, total


def weight_sparsity(layers: list[Prunable]) -> float:
    """Fraction of exactly-zero weights over all Conv/Linear weights."""
    zeros, total = zero_weights(layers)
    return zeros / total if total else 0.0


def param_counts(model: nn.Module) -> tuple[int, int]:
    """(non-zero parameters, all parameters) of the model."""
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())
    return nonzero, total


def packed_size_bytes(model: nn.Module, bits: int) -> int:
    """Analytic size of the weights packed at ``bits``: each Conv/Linear weight at ``bits / 8``
    bytes plus one fp32 scale per output channel (none at 16 and 32 bits); every other
    parameter fp32.
    No credit for sparsity (that shows in the compressed file size) and no format overhead."""
    layers = prunable_layers(model)
    quantized = {id(layer.weight) for layer in layers}
    size = 0
    for layer in layers:
        size += math.ceil(layer.weight.numel() * bits / 8)
        if bits <= 8:
            size += 4 * layer.weight.shape[0]
    size += sum(4 * p.numel() for p in model.parameters() if id(p) not in quantized)
    return size
