"""Structured pruning: whole output channels (Conv) and neurons (Linear) physically removed with
torch-pruning's dependency graph, so the exported model is smaller and faster."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trials._compress import prunable_layers
from trials._errors import PruningError
from trials._heads import HeadPruning, attention_modules, prune_heads


@dataclass(frozen=True)
class StructuredPruning:
    """What ``prune_structured`` removed: output units (Conv channels + Linear neurons) summed
    over the Conv/Linear layers before and after, and per-layer output widths after."""

    dense_units: int
    units: int
    widths: tuple[int, ...]
    heads: tuple[HeadPruning, ...] = ()

    @property
    def removed(self) -> int:
        return self.dense_units - self.units

    def attention_tag(self) -> str:
        """Which attention modules lost heads (and how many), and which were left out and why."""
        return "; ".join(h.describe() for h in self.heads)

    @property
    def channel_sparsity(self) -> float:
        """Fraction of the prunable units removed (the last layer's are never prunable)."""
        return self.removed / self.dense_units if self.dense_units else 0.0


def output_units(model: nn.Module) -> int:
    """Conv output channels plus Linear output features, summed over the model's layers."""
    return sum(_width(layer) for layer in prunable_layers(model))


def prune_structured(
    model: nn.Module, example: Tensor, ratio: float, *, what: str
) -> StructuredPruning:
    """Remove ``ratio`` of the output channels/neurons of every Conv/Linear layer but the last
    (uniform per layer, L2-magnitude importance), in place, through torch-pruning's
    ``MetaPruner``: the dependency graph shrinks the layers that consume them too (the next
    layer's input channels, a Flatten into a Linear).

    Attention (any module with a head count and q/k/v/out ``nn.Linear`` children,
    ``trials._heads``) loses whole heads instead, ``floor(ratio * heads)`` per module, checked
    to compute what the model did with those heads zeroed; its Linear layers, and every layer
    whose channels are tied to them (the residual stream), are never pruned as neurons.

    Uniform per layer rather than global: every layer keeps ``1 - ratio`` of its width, so no
    layer can be emptied and the latency gain is predictable. The last layer (the model's
    output) is left whole; the output shape is checked to be unchanged.
    """
    import torch_pruning as tp

    layers = prunable_layers(model)
    dense_units = sum(_width(layer) for layer in layers)
    model.eval()
    with torch.no_grad():
        expected = tuple(model(example).shape)
    heads: list[HeadPruning] = []
    if ratio > 0 and len(layers) > 1:
        try:
            heads = prune_heads(model, example, ratio)
            attention = [m for a in attention_modules(model) for m in a.modules()]
            pruner = tp.pruner.MetaPruner(
                model,
                example,
                importance=tp.importance.MagnitudeImportance(p=2),
                pruning_ratio=ratio,
                global_pruning=False,
                ignored_layers=[layers[-1], *attention],
            )
            pruner.step()
            with torch.no_grad():
                model(example)
        except Exception as exc:
            raise PruningError(
                f"{what}: structured pruning must trace the model with torch-pruning's "
                f"dependency graph, but it failed with {type(exc).__name__}: {exc}. Fix: search "
                "pruning: unstructured for this model."
            ) from exc
    with torch.no_grad():
        got = tuple(model(example).shape)
    if got != expected:
        raise PruningError(
            f"{what}: structured pruning must keep the model's output shape {expected}, but it "
            f"is {got} now. Fix: search pruning: unstructured for this model."
        )
    widths = tuple(_width(layer) for layer in prunable_layers(model))
    return StructuredPruning(
        dense_units=dense_units, units=sum(widths), widths=widths, heads=tuple(heads)
    )


def _width(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return int(layer.out_features)
    return int(layer.out_channels)  # type: ignore[arg-type]
