"""Pareto front of trial results: which trials no other trial beats on every objective."""

from __future__ import annotations

from collections.abc import Sequence

import moocore
import numpy as np
import pandas as pd

from reports._errors import ReportError

DIRECTIONS = ("maximize", "minimize")


def _check_directions(directions: Sequence[str], n_columns: int | None = None) -> list[str]:
    if isinstance(directions, str):
        raise ReportError(
            f"directions must be a list with one direction per objective, got the string "
            f"{directions!r}; write [{directions!r}] for one objective"
        )
    dirs = list(directions)
    bad = [d for d in dirs if d not in DIRECTIONS]
    if bad:
        raise ReportError(
            f"each direction must be one of {list(DIRECTIONS)}, got {bad[0]!r} in {dirs}"
        )
    if n_columns is not None and len(dirs) != n_columns:
        raise ReportError(
            f"one direction per objective column is needed: values has {n_columns} column(s) "
            f"but {len(dirs)} direction(s) were given ({dirs})"
        )
    if not dirs:
        raise ReportError("at least one objective direction is needed, got none")
    return dirs


def pareto_mask(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``values`` (n trials x m objectives).

    A row is dominated when another row is at least as good on every objective and strictly
    better on one. Rows with identical values do not dominate each other, so all copies of a
    non-dominated point are on the front (moocore's ``keep_weakly=True``; its default would keep
    only the first copy, an accident of row order). Values must be finite: drop rows with
    missing values first, as :func:`pareto_front` does.
    """
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 2:
        raise ReportError(
            f"values must be a 2-D array (one row per trial, one column per objective), "
            f"got shape {arr.shape}; reshape a single objective with values.reshape(-1, 1)"
        )
    dirs = _check_directions(directions, arr.shape[1])
    if arr.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    if not np.isfinite(arr).all():
        row, col = np.argwhere(~np.isfinite(arr))[0]
        raise ReportError(
            f"values must be finite, got {arr[row, col]} at row {row}, column {col}; "
            "drop trials with missing objective values first (pareto_front does)"
        )
    maximise = [d == "maximize" for d in dirs]
    mask = moocore.is_nondominated(arr, maximise=maximise, keep_weakly=True)
    return np.asarray(mask, dtype=bool)


def parse_objectives(tag: str) -> list[tuple[str, str]]:
    """Parse the ``slimtune.objectives`` tag, e.g. ``"accuracy:maximize,latency_ms:minimize"``."""
    objectives: list[tuple[str, str]] = []
    for item in tag.split(","):
        name, sep, direction = (part.strip() for part in item.partition(":"))
        if not sep or not name or direction not in DIRECTIONS:
            raise ReportError(
                f"the objectives tag must be a comma-separated list of metric:direction with "
                f"direction in {list(DIRECTIONS)}, got {tag!r} (bad item {item.strip()!r}); "
                "e.g. 'accuracy:maximize,size_gzip_bytes:minimize'"
            )
        if name in (n for n, _ in objectives):
            raise ReportError(
                f"each metric may appear once in the objectives tag, got {name!r} twice in {tag!r}"
            )
        objectives.append((name, direction))
    return objectives


def _check_objectives(
    df: pd.DataFrame, objectives: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    objs = [tuple(o) for o in objectives]
    if not objs or any(len(o) != 2 for o in objs):
        raise ReportError(
            f"objectives must be a non-empty list of (metric, direction) pairs, got {objectives!r}"
        )
    pairs = [(str(m), str(d)) for m, d in objs]
    _check_directions([d for _, d in pairs])
    missing = [m for m, _ in pairs if m not in df.columns]
    if missing:
        raise ReportError(
            f"every objective must be a column of the trials table; missing {missing}, "
            f"columns are {list(df.columns)}"
        )
    return pairs


def pareto_front(df: pd.DataFrame, objectives: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """Return a copy of ``df`` with a bool column ``pareto``: True for non-dominated trials.

    Only rows with a finite value for every objective can be on the front, and, when ``df`` has
    a ``status`` column, only FINISHED ones: failed or running trials never are.
    """
    pairs = _check_objectives(df, objectives)
    out = df.copy()
    names = [m for m, _ in pairs]
    values = out[names].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    eligible = np.isfinite(values).all(axis=1)
    if "status" in out.columns:
        eligible &= (out["status"] == "FINISHED").to_numpy(dtype=bool)
    mask = np.zeros(len(out), dtype=bool)
    mask[eligible] = pareto_mask(values[eligible], [d for _, d in pairs])
    out["pareto"] = mask
    return out
