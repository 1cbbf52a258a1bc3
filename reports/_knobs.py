"""Which knobs a search varied, read from its recorded search space, and how to show them.

The parent run logs the space as ``space.<knob>`` params (a plain value when the knob is fixed,
a ``{'low': ..}`` range or ``{'choices': [..]}`` list when it is searched). Every surface (the
Pareto table, ``select``, the report) shows the knobs that vary, whatever they are, plus the
artifact ``format`` (it names the int8 format) when trials differ in it.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping, Sequence

import pandas as pd

from searchspace import KNOBS

SPACE_PREFIX = "space."
# A column that tells apart what the knobs do not: the artifact's format (int8 format, fp16, ..).
FORMAT_COLUMN = "format"


def space_varies(text: str) -> bool:
    """Whether a ``space.<knob>`` param, as logged, is searched (a range, or a list of two or
    more choices) rather than fixed."""
    text = text.strip()
    if not text.startswith("{"):
        return False
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return True  # a cut or unusual dict: a searched knob all the same
    if isinstance(value, dict) and "choices" in value:
        return len(value["choices"]) > 1
    return True


def varying_knobs(parent_params: Mapping[str, str], trials: pd.DataFrame) -> list[str]:
    """The knobs that vary in a search, in the order of its space, as columns of ``trials``.

    From the parent's ``space.*`` params; without any (a table from elsewhere), the knob columns
    of ``trials`` whose values differ. ``format`` is added when the finished trials differ in it.
    """
    space = [
        (k[len(SPACE_PREFIX) :], v) for k, v in parent_params.items() if k.startswith(SPACE_PREFIX)
    ]
    if space:
        knobs = [k for k, v in space if space_varies(str(v)) and k in trials.columns]
    else:
        # Without a recorded space: the knob columns a trials table may have.
        knobs = [c for c in KNOBS if c in trials.columns and _differs(trials[c])]
    if FORMAT_COLUMN in trials.columns and _differs(_finished(trials)[FORMAT_COLUMN]):
        knobs.append(FORMAT_COLUMN)
    return knobs


def _finished(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[trials["status"] == "FINISHED"] if "status" in trials.columns else trials


def _differs(column: pd.Series) -> bool:
    return column.dropna().astype(str).nunique() > 1


def knob_value(name: str, value: object) -> str:
    """One knob value for a table or a line: lr in scientific notation, numbers short."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    try:
        number = float(str(value))
    except ValueError:
        return str(value)
    if not math.isfinite(number):
        return str(value)
    if name == "lr":
        return f"{number:.2e}"
    if number.is_integer():
        return str(int(number))
    return f"{number:.3g}"


def knobs_text(row: Mapping[str, object] | pd.Series, knobs: Sequence[str]) -> str:
    """``"lr=1.00e-03 pruning=structured sparsity=0.4"``: the row's values of ``knobs``."""
    return " ".join(f"{k}={knob_value(k, row.get(k))}" for k in knobs)
