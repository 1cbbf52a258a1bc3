"""Settings of how trials prune (the scheme, scope and sparsity are knobs of ``space``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# Pruning scopes of unstructured pruning. global: one magnitude threshold over all layers, with
# no layer pruned past its cap (``layer_sparsity_cap``); layer: every layer to the same ratio.
PRUNING_SCOPES: tuple[str, ...] = ("global", "layer")


def layer_sparsity_cap(sparsity: float) -> float:
    """The most of any one layer global pruning may remove at overall ``sparsity``:
    ``(1 + sparsity) / 2``, i.e. every layer keeps at least half the average density (0.75 at
    0.5, 0.95 at 0.9). It never lies below ``sparsity``, so the target is always reachable.
    See docs/pruning.md for why."""
    return (1.0 + sparsity) / 2.0


class Pruning(BaseModel):
    """How pruned models are shaped.

    ``round_to``: structured pruning keeps every layer's width a multiple of this many
    channels/neurons (8 by default, what vector units and GEMM kernels like); 1 keeps the exact
    ratio. A width is never rounded to 0 nor above the dense width (a layer narrower than
    ``round_to`` keeps its unrounded width).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    round_to: Annotated[int, Field(ge=1, le=1024, strict=True)] = 8
