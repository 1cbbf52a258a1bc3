"""Per-layer kept widths in a mixed plan: the prunable groups of a model, what pruning each one
alone costs in accuracy (the sensitivity) and saves in bytes (exact, from the shapes).

A group is what structured pruning removes as one: a layer's output units (a Conv's channels,
a Linear's neurons), with everything torch-pruning's dependency graph removes with them (the
next layer's inputs, a BatchNorm's channels, layers tied to the same channels), or an attention
module's heads (``trials._heads``). Each group is pruned alone on a copy of the dense model by
``prune_structured`` itself, at each candidate kept share (``KEEP_CHOICES``): the relative output
error on the calibration batch is its loss, and the shapes every layer has afterwards are its
effect. The predicted size of a whole plan composes those effects (``predict_bytes``): each
layer's weight has the output and input widths its groups left, stored in its format; that is
exact whenever each dimension belongs to one group, which is how the dependency graph builds
groups.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trials._compress import Prunable, prunable_layers
from trials._errors import PruningError
from trials._heads import attention_sites, held_by_attention
from trials._quantize_int4 import _block_size
from trials._structured import prune_structured

# The kept shares the allocator may give a group (1.0: the whole width).
KEEP_CHOICES = (1.0, 0.75, 0.5, 0.25)
# Bytes a layer adds to the file beyond its weight, scales and zero points: the Cast node (fp16);
# the QDQ nodes, the activation scale and zero point, the int32 bias' scale (int8); the node
# (int4).
NODE_BYTES = {"fp32": 0, "fp16": 60, "int8": 1000, "int4": 120}


@dataclass(frozen=True)
class LayerShape:
    """A Conv/Linear layer's weight as the size prediction needs it: output units, input units
    (per conv group), the kernel's element count, whether it has a bias, whether it is Linear."""

    name: str
    out: int
    inp: int
    kernel: int = 1
    bias: bool = True
    linear: bool = True

    @classmethod
    def of(cls, name: str, layer: Prunable) -> LayerShape:
        w = layer.weight
        kernel = int(math.prod(w.shape[2:])) if w.dim() > 2 else 1
        linear = isinstance(layer, nn.Linear)
        return cls(name, int(w.shape[0]), int(w.shape[1]), kernel, layer.bias is not None, linear)

    def nbytes(self, fmt: str, out: int | None = None, inp: int | None = None) -> int:
        """Predicted bytes of this weight (and bias) stored as ``fmt``, at ``out`` x ``inp``
        (default: the dense widths)."""
        out = self.out if out is None else out
        inp = self.inp if inp is None else inp
        n = out * inp * self.kernel
        bias = 4 * out if self.bias else 0
        if fmt == "fp32":
            return 4 * n + bias
        if fmt == "fp16":  # fp16 weight read through a Cast, fp32 bias
            return 2 * n + bias + NODE_BYTES["fp16"]
        if fmt == "int8":  # int8 weight, fp32 scale + int8 zero point per channel, int32 bias
            return n + 5 * out + (2 * bias if bias else 0) + NODE_BYTES["int8"]
        if fmt == "int4":
            if self.linear:  # MatMulNBits: blocks along K, one scale per block
                block = _block_size(inp)
                blocks = -(-inp // block)
                return out * blocks * (block // 2 + 4) + bias + NODE_BYTES["int4"]
            return math.ceil(n / 2) + 4 * out + bias + NODE_BYTES["int4"]
        raise ValueError(f"a mixed plan's formats are fp32, fp16, int8 and int4, not {fmt!r}")


@dataclass(frozen=True)
class WidthOption:
    """One kept share of a group: its ``loss`` (relative output error with only this group
    pruned), the ``shapes`` (layer -> [out, in]) of the layers whose weight it changes, and the
    change of the parameter count outside the Conv/Linear layers (BatchNorm, LayerNorm)."""

    keep: float
    loss: float = 0.0
    shapes: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    other_params: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "keep": self.keep,
            "loss": self.loss,
            "shapes": {k: list(v) for k, v in self.shapes.items()},
            "other_params": self.other_params,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WidthOption:
        shapes = {str(k): (int(v[0]), int(v[1])) for k, v in data["shapes"].items()}
        return cls(float(data["keep"]), float(data["loss"]), shapes, int(data["other_params"]))


@dataclass(frozen=True)
class WidthGroup:
    """A prunable group: ``name`` (the layer or attention module pruned), ``kind`` (neurons or
    heads) and its options, the whole width (keep 1.0, no change) first."""

    name: str
    kind: str
    options: tuple[WidthOption, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "options": [o.to_dict() for o in self.options],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WidthGroup:
        options = tuple(WidthOption.from_dict(o) for o in data["options"])
        return cls(str(data["name"]), str(data["kind"]), options)


def _others(model: nn.Module) -> int:
    inside = {id(p) for layer in prunable_layers(model) for p in layer.parameters(recurse=False)}
    return sum(p.numel() for p in model.parameters() if id(p) not in inside)


def _shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    names = {id(m): n for n, m in model.named_modules()}
    return {
        names[id(layer)]: (int(layer.weight.shape[0]), int(layer.weight.shape[1]))
        for layer in prunable_layers(model)
    }


def measure_widths(
    model: nn.Module,
    example: torch.Tensor,
    batch: torch.Tensor,
    *,
    round_to: int,
    what: str,
    keeps: Sequence[float] = KEEP_CHOICES,
) -> tuple[WidthGroup, ...]:
    """Each prunable group of ``model`` pruned alone at each share of ``keeps`` (on a copy, by
    ``prune_structured``): its loss on ``batch`` and its effect on the shapes. Candidates are
    every Conv/Linear layer but the last that attention does not hold (neurons: also a
    block's MLP beside its q/k/v/out, ``held_by_attention``) and every recognised attention
    module (heads). A layer that cannot be pruned alone is left out, a layer tied to one
    already measured is not measured again, and so is a share that removes nothing (a layer
    narrower than ``round_to``)."""
    model.eval()
    layers = prunable_layers(model)
    names = {id(m): n for n, m in model.named_modules()}
    held = {id(m) for m in held_by_attention(model)}
    candidates = [("neurons", names[id(x)]) for x in layers[:-1] if id(x) not in held]
    candidates += [("heads", site.name) for site in attention_sites(model)[0]]
    dense_shapes = _shapes(model)
    dense_others = _others(model)
    with torch.no_grad():
        ref = model(batch).float()
    norm = float((ref**2).sum()) or 1.0
    groups: list[WidthGroup] = []
    covered: set[str] = set()
    for kind, name in candidates:
        if name in covered:
            continue
        options = [WidthOption(1.0)]
        for keep in sorted(set(keeps), reverse=True):
            if keep >= 1.0:
                continue
            pruned = copy.deepcopy(model)
            share = {name: 1.0 - keep}
            try:
                prune_structured(
                    pruned,
                    example,
                    0.0,
                    what=what,
                    round_to=round_to,
                    layer_ratios=share if kind == "neurons" else {},
                    head_ratios=share if kind == "heads" else {},
                )
            except PruningError:
                break
            shapes = {k: v for k, v in _shapes(pruned).items() if dense_shapes.get(k) != v}
            if not shapes or any(o.shapes == shapes for o in options):
                continue
            if kind == "neurons":
                covered.update(k for k, v in shapes.items() if v[0] != dense_shapes[k][0])
            with torch.no_grad():
                out = pruned(batch).float()
            loss = float(((out - ref) ** 2).sum()) / norm
            options.append(WidthOption(keep, loss, shapes, _others(pruned) - dense_others))
        if len(options) > 1:
            groups.append(WidthGroup(name, kind, tuple(options)))
    return tuple(groups)


def kept_widths(
    options: Sequence[WidthOption],
) -> tuple[dict[str, int], dict[str, int], int]:
    """The output and input widths the chosen ``options`` leave each layer they touch (the
    narrowest when two groups touch one dimension), and the parameters they remove outside the
    layers."""
    outs: dict[str, int] = {}
    ins: dict[str, int] = {}
    removed = 0
    for option in options:
        removed += option.other_params
        for name, (o, i) in option.shapes.items():
            outs[name] = min(o, outs.get(name, o))
            ins[name] = min(i, ins.get(name, i))
    return outs, ins, removed


def predict_bytes(
    shapes: Sequence[LayerShape],
    formats: Mapping[str, str],
    options: Sequence[WidthOption],
    *,
    fixed_bytes: int,
) -> int:
    """Predicted artifact bytes: ``fixed_bytes`` (graph and parameters outside the layers at
    their dense size), each layer at its format and the widths the chosen ``options`` give it
    (``kept_widths``), and the parameters the options remove outside the layers."""
    outs, ins, removed = kept_widths(options)
    total = fixed_bytes + 4 * removed
    for s in shapes:
        total += s.nbytes(formats[s.name], outs.get(s.name, s.out), ins.get(s.name, s.inp))
    return total


def kept_work(
    shapes: Sequence[LayerShape], options: Sequence[WidthOption]
) -> tuple[dict[str, float], dict[str, float]]:
    """Each layer's share of its dense multiply-adds that the chosen ``options`` leave (kept
    outputs x kept inputs over dense), and its share of its dense output units."""
    outs, ins, _ = kept_widths(options)
    work = {
        s.name: (outs.get(s.name, s.out) * ins.get(s.name, s.inp)) / (s.out * s.inp) for s in shapes
    }
    return work, {s.name: outs.get(s.name, s.out) / s.out for s in shapes}
