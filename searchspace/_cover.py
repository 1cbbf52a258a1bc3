"""Coverage of categorical knobs: the combinations of choices the first trials of a search take.

``sampler.cover: [bits, pruning]`` makes a search try every (bits, pruning) pair whatever its
sampler would have proposed: the searcher enqueues one trial per combination, in order, before
the sampler's own proposals, and the sampler draws the knobs not covered (lr, sparsity, ...).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from searchspace._distributions import to_distributions
from searchspace._space import FloatRange, Space


def check_cover(space: Space, names: Sequence[str], trials: int) -> None:
    """Raise ``ValueError`` (stating the rule, the value and the fix) when ``names`` cannot be
    covered: a knob that is a range has no finite set of choices, and the combinations must fit
    in the search's trial budget."""
    knobs = space.knobs()
    ranges = [name for name in names if isinstance(knobs[name], FloatRange)]
    if ranges:
        raise ValueError(
            f"cover takes knobs with a list of choices, and space.{ranges[0]} is a range "
            f"({knobs[ranges[0]]}); give it {{choices: [...]}} or leave it out of cover"
        )
    count = len(cover_points(space, names))
    if count > trials:
        sizes = " x ".join(
            f"{len(to_distributions(space)[n].choices)} {n}"  # type: ignore[attr-defined]
            for n in names
        )
        raise ValueError(
            f"cover needs one trial per combination of {list(names)} ({sizes} = {count}), "
            f"more than trials={trials}; raise trials to at least {count} or cover fewer knobs"
        )


def cover_points(space: Space, names: Sequence[str]) -> list[dict[str, Any]]:
    """Every combination of the choices of the knobs ``names``, in the order the choices are
    listed (the first knob varies slowest), as the values Optuna's distributions hold."""
    if not names:
        return []
    distributions = to_distributions(space)
    choices = [list(distributions[name].choices) for name in names]  # type: ignore[attr-defined]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*choices)]
