"""Structured pruning: whole output channels (Conv) and neurons (Linear) physically removed with
torch-pruning's dependency graph, so the exported model is smaller and faster."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trials._compress import prunable_layers
from trials._errors import PruningError
from trials._heads import HeadPruning, held_by_attention, inside_attention, prune_heads


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


def kept_width(dense: int, ratio: float, round_to: int) -> int:
    """The width a layer of ``dense`` units keeps when ``ratio`` of them is removed, rounded to
    the nearest multiple of ``round_to`` (ties: the wider). Never 0 and never above ``dense``:
    a layer narrower than ``round_to`` keeps the unrounded width (at least 1)."""
    if dense < 1 or round_to < 1:
        raise PruningError(
            f"kept_width needs dense >= 1 and round_to >= 1, but got dense={dense}, "
            f"round_to={round_to}. Fix: report this as a slimtune bug."
        )
    target = dense * (1.0 - ratio)
    exact = min(dense, max(1, math.floor(target + 0.5)))
    if round_to == 1 or dense < round_to:
        return exact
    lower = max(round_to, math.floor(target / round_to) * round_to)
    upper = lower + round_to
    if upper > dense:
        return min(lower, dense)
    return upper if upper - target <= target - lower else lower


def prune_structured(
    model: nn.Module,
    example: Tensor,
    ratio: float,
    *,
    what: str,
    round_to: int = 8,
    layer_ratios: Mapping[str, float] | None = None,
    head_ratios: Mapping[str, float] | None = None,
) -> StructuredPruning:
    """Remove ``ratio`` of the output channels/neurons of every Conv/Linear layer but the last
    (uniform per layer, L2-magnitude importance), in place, through torch-pruning's
    ``MetaPruner``: the dependency graph shrinks the layers that consume them too (the next
    layer's input channels, a Flatten into a Linear).

    Attention (any module with a head count and q/k/v/out ``nn.Linear`` children,
    ``trials._heads``) loses whole heads instead, ``floor(ratio * heads)`` per module, checked
    to compute what the model did with those heads zeroed; its Linear layers, and every layer
    whose channels are tied to them (the residual stream), are never pruned as neurons. Other
    layers inside such a module (the MLP of a block that keeps the head count itself) are
    pruned as any layer, where a copy shows that this works (``_beside_attention_prunes``).

    Uniform per layer rather than global: every layer keeps ``1 - ratio`` of its width, so no
    layer can be emptied and the latency gain is predictable; that width is rounded to a
    multiple of ``round_to`` (``kept_width``): a width of 52 runs slower than 56 or 48 in
    vectorised kernels. The last layer (the model's output) is left whole; the output shape is
    checked to be unchanged.

    Per layer (a mixed plan, ``trials._plan_widths``): with ``layer_ratios`` (module name ->
    share of its output units removed) and ``head_ratios`` (attention module name -> share of
    its heads removed), ``ratio`` is ignored and each named layer or module loses its own share
    (the same rounding, the same dependency graph); layers not named keep their width.
    """
    if layer_ratios is not None or head_ratios is not None:
        return _prune_per_layer(
            model, example, layer_ratios or {}, head_ratios or {}, what=what, round_to=round_to
        )

    layers = prunable_layers(model)
    dense_units = sum(_width(layer) for layer in layers)
    model.eval()
    with torch.no_grad():
        expected = tuple(model(example).shape)
    heads: list[HeadPruning] = []
    if ratio > 0 and len(layers) < 2:
        others = _unprunable_layers(model)
        raise PruningError(
            f"{what}: structured pruning at {ratio:g} must remove channels or neurons, but the "
            f"model's only Conv/Linear layer{'s are' if len(layers) != 1 else ' is'} its output "
            "(kept whole), so it would change nothing; weights of other layers "
            f"({others or 'nn.GRU, nn.LSTM, nn.Embedding, attention parameters'}) are not "
            "pruned structurally. Fix: search pruning: unstructured, or sparsity 0 with "
            "structured, for this model."
        )
    if ratio > 0:
        try:
            heads = prune_heads(model, example, ratio)
            beside = _beside_attention_prunes(model, example, ratio, round_to, expected)
            _prune_neurons(model, example, ratio, round_to, beside_attention=beside)
        except Exception as exc:
            raise PruningError(
                f"{what}: structured pruning must trace the model with torch-pruning's "
                f"dependency graph, but it failed with {type(exc).__name__}: {exc}. Fix: search "
                "pruning: unstructured for this model."
            ) from exc
    with torch.no_grad():
        got = tuple(model(example).shape)
    return _pruned(model, what, expected, got, dense_units, heads)


def _prune_neurons(
    model: nn.Module, example: Tensor, ratio: float, round_to: int, *, beside_attention: bool
) -> None:
    """Remove ``ratio`` of every Conv/Linear layer's output units but the last (rounded, see
    ``kept_width``) with torch-pruning, in place. Attention's projections are never pruned as
    neurons; ``beside_attention`` says whether the other layers inside a recognised attention
    module (a block's MLP beside its q/k/v/out) are (``held_by_attention``), or every layer
    inside an attention module is left whole."""
    layers = prunable_layers(model)
    ratios: dict[nn.Module, float] = {
        layer: _torch_pruning_ratio(layer, ratio, round_to) for layer in layers[:-1]
    }
    held = held_by_attention(model) if beside_attention else inside_attention(model)
    _meta_prune(model, example, ratios, ignored=[layers[-1], *held], ratio=ratio)
    with torch.no_grad():
        model(example)


def _torch_pruning_ratio(layer: nn.Module, share: float, round_to: int) -> float:
    """The ratio that makes torch-pruning keep exactly ``kept_width(...)`` of ``layer``'s
    units: it keeps ``int(dense * (1 - r))``, so r is set half a unit short of the exact one."""
    dense = _width(layer)
    return max(0.0, (dense - kept_width(dense, share, round_to) - 0.5) / dense)


def _meta_prune(
    model: nn.Module,
    example: Tensor,
    ratios: Mapping[nn.Module, float],
    *,
    ignored: Sequence[nn.Module],
    ratio: float,
) -> None:
    """One step of torch-pruning's ``MetaPruner`` (L2 magnitude, per layer): ``ratios`` by
    layer, ``ratio`` for any other, ``ignored`` layers' outputs kept whole."""
    import torch_pruning as tp

    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        pruning_ratio_dict=dict(ratios),  # type: ignore[arg-type]
        global_pruning=False,
        ignored_layers=list(ignored),
    )
    pruner.step()


def _beside_attention_prunes(
    model: nn.Module, example: Tensor, ratio: float, round_to: int, expected: tuple[int, ...]
) -> bool:
    """Whether the layers beside a recognised attention's projections can be pruned: tried on
    a copy, which must still run and give the output shape (if not, e.g. a layer that the
    attention reads by head without being one of its projections, they are left whole, as
    every layer inside attention was before). False when there are none."""
    held = {id(m) for m in held_by_attention(model)}
    if held == {id(m) for m in inside_attention(model)}:
        return False
    trial = copy.deepcopy(model)
    try:
        _prune_neurons(trial, example, ratio, round_to, beside_attention=True)
        with torch.no_grad():
            return tuple(trial(example).shape) == expected
    except Exception:
        return False


def _prune_per_layer(
    model: nn.Module,
    example: Tensor,
    layer_ratios: Mapping[str, float],
    head_ratios: Mapping[str, float],
    *,
    what: str,
    round_to: int,
) -> StructuredPruning:
    layers = prunable_layers(model)
    dense_units = sum(_width(layer) for layer in layers)
    named = {id(m): n for n, m in model.named_modules()}
    model.eval()
    with torch.no_grad():
        expected = tuple(model(example).shape)
    ratios: dict[nn.Module, float] = {
        layer: _torch_pruning_ratio(layer, share, round_to)
        for layer in layers[:-1]
        if (share := layer_ratios.get(named[id(layer)], 0.0)) > 0
    }
    try:
        heads = prune_heads(model, example, head_ratios) if head_ratios else []
        if ratios:
            held = held_by_attention(model)  # a plan names no layer attention holds
            _meta_prune(model, example, ratios, ignored=[layers[-1], *held], ratio=0.0)
        with torch.no_grad():
            got = tuple(model(example).shape)
    except Exception as exc:
        raise PruningError(
            f"{what}: per-layer structured pruning must trace the model with torch-pruning's "
            f"dependency graph, but it failed with {type(exc).__name__}: {exc}. Fix: search "
            "pruning: unstructured (or plan: uniform) for this model."
        ) from exc
    return _pruned(model, what, expected, got, dense_units, heads)


def _unprunable_layers(model: nn.Module) -> str:
    """``rnn (GRU), emb (Embedding)``: the modules holding weights of their own that are not
    Conv/Linear layers, and the model's own matrices (``w (a Parameter of Net)``): structured
    pruning never removes their units."""
    prunable = set(map(id, prunable_layers(model)))
    found = []
    for name, m in model.named_modules():
        if id(m) in prunable:
            continue
        if name and any(p.dim() >= 2 for p in m.parameters(recurse=False)):
            found.append(f"{name} ({type(m).__name__})")
        elif not name:  # the model's own matrices (e.g. x @ self.w): named by parameter
            found += [
                f"{p} (a Parameter of {type(m).__name__})"
                for p, t in m.named_parameters(recurse=False)
                if t.dim() >= 2
            ]
    return ", ".join(found)


def _width(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return int(layer.out_features)
    return int(layer.out_channels)  # type: ignore[arg-type]


def _pruned(
    model: nn.Module,
    what: str,
    expected: tuple[int, ...],
    got: tuple[int, ...],
    dense_units: int,
    heads: Sequence[HeadPruning],
) -> StructuredPruning:
    """The record of a structured pruning, once the model still gives its output shape."""
    if got != expected:
        raise PruningError(
            f"{what}: structured pruning must keep the model's output shape {expected}, but it "
            f"is {got} now. Fix: search pruning: unstructured for this model."
        )
    widths = tuple(_width(layer) for layer in prunable_layers(model))
    return StructuredPruning(
        dense_units=dense_units, units=sum(widths), widths=widths, heads=tuple(heads)
    )
