"""Two checkouts of slimtune timed in turn (``search_start.py``, ``trial_time.py``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def in_turn(codes: dict[str, Path], repeats: int, run: Callable[[Path], T]) -> dict[str, list[T]]:
    """``run`` on each checkout of ``codes`` (name -> root), ``repeats`` rounds, each round in
    the other order, so that neither side always follows the other's shut-down; each result is
    printed to stderr as it comes."""
    results: dict[str, list[T]] = {name: [] for name in codes}
    for k in range(repeats):
        for name, root in list(codes.items())[:: 1 if k % 2 == 0 else -1]:
            results[name].append(run(root))
            print(f"round {k + 1} {name}: {results[name][-1]}", file=sys.stderr, flush=True)
    return results
