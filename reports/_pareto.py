"""Pareto front of trial results: which trials no other trial beats on every objective."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import moocore
import numpy as np
import pandas as pd

from reports._errors import ReportError
from reports._noise import Tolerance, dominance, peel, tie_groups

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


def pareto_front(
    df: pd.DataFrame,
    objectives: Sequence[tuple[str, str]],
    *,
    tolerances: Mapping[str, Tolerance] | None = None,
) -> pd.DataFrame:
    """Return a copy of ``df`` with a bool column ``pareto``: True for non-dominated trials
    under noise-aware dominance (:func:`pareto_ranks`, which adds the other columns too).

    Only rows with a finite value for every objective can be on the front, and, when ``df`` has
    a ``status`` column, only FINISHED ones: failed or running trials never are.
    """
    return pareto_ranks(df, objectives, tolerances=tolerances)


def pareto_ranks(
    df: pd.DataFrame,
    objectives: Sequence[tuple[str, str]],
    *,
    tolerances: Mapping[str, Tolerance] | None = None,
) -> pd.DataFrame:
    """Return a copy of ``df`` ranked by noise-aware dominance (reports._noise, docs/noise.md).

    ``tolerances`` (metric -> :class:`Tolerance`; ``SearchRuns.tolerances``) say within what two
    trials tie on each objective; ``None`` or a metric left out: ``auto``. Columns added:

    - ``pareto_rank`` (Int64): non-dominated sorting rank under those tolerances, 0 for the
      front; ``<NA>`` for rows that cannot be ranked (not FINISHED, or a missing value);
    - ``pareto`` (bool): ``pareto_rank == 0``;
    - ``pareto_strict`` (bool): on the strict front (no tolerance; moocore, identical points
      kept), which a noise-aware front may differ from;
    - ``pareto_group`` (Int64): for front rows, the trial number (or row label) of the
      representative of its group of trials tied within tolerance on every objective;
      ``pareto_representative`` (bool); ``pareto_tied`` (str): the other members, e.g. "3,7".
    """
    pairs = _check_objectives(df, objectives)
    tols = dict(tolerances or {})
    out = df.copy()
    values, eligible = _objective_values(out, pairs)
    ranks = pd.array([pd.NA] * len(out), dtype="Int64")
    strict = np.zeros(len(out), dtype=bool)
    groups = pd.array([pd.NA] * len(out), dtype="Int64")
    representative = np.zeros(len(out), dtype=bool)
    tied_text = [""] * len(out)
    rows = np.flatnonzero(eligible)
    if len(rows):
        strict[rows] = pareto_mask(values[eligible], [d for _, d in pairs])
        sub = out.iloc[rows]
        # One dominance over every ranked row: the tolerances (a latency's replicate floor)
        # come from all of them, and the front's ties are read from the same matrix.
        dominates, tied_all = dominance(sub, pairs, tols)
        got = peel(dominates)
        ranks[rows] = got
        on_front = rows[got == 0]
        front_df = out.iloc[on_front]
        front_pos = np.flatnonzero(got == 0)
        tied = tied_all[np.ix_(front_pos, front_pos)]
        _, members = tie_groups(front_df, tied)
        labels = _labels(front_df)
        for group in members:
            rep = labels[group[0]]
            representative[on_front[group[0]]] = True
            for i in group:
                groups[on_front[i]] = rep
                tied_text[on_front[i]] = ",".join(str(labels[j]) for j in group if j != i)
    out["pareto_rank"] = ranks
    out["pareto"] = (out["pareto_rank"] == 0).fillna(False).astype(bool)
    out["pareto_strict"] = strict
    out["pareto_group"] = groups
    out["pareto_representative"] = representative
    out["pareto_tied"] = tied_text
    return out


def _labels(df: pd.DataFrame) -> list[int]:
    """Trial numbers of ``df``'s rows (their position when the table has none)."""
    if "trial_number" in df.columns:
        numbers = pd.to_numeric(df["trial_number"], errors="coerce")
        if numbers.notna().all():
            return [int(v) for v in numbers]
    return list(range(len(df)))


def front(
    df: pd.DataFrame,
    objectives: Sequence[tuple[str, str]],
    *,
    tolerances: Mapping[str, Tolerance] | None = None,
) -> pd.DataFrame:
    """The non-dominated trials of ``df`` under noise-aware dominance, best first objective
    first (a notebook helper).

    ``df`` is e.g. ``load_search(...).trials``; ``objectives`` its ``objectives`` (a list of
    ``(metric, direction)``), ``tolerances`` its ``tolerances``. The result keeps every column
    of ``df`` and adds those of :func:`pareto_ranks` (``pareto_rank``, ``pareto_group``,
    ``pareto_tied``, ...).
    """
    ranked = pareto_ranks(df, objectives, tolerances=tolerances)
    out = ranked[ranked["pareto"]]
    first, direction = _check_objectives(df, objectives)[0]
    by = [first, "trial_number"] if "trial_number" in out.columns else [first]
    return out.sort_values(
        by, ascending=[direction == "minimize", True][: len(by)], kind="stable"
    ).reset_index(drop=True)


# The hypervolume reference: a cost objective's reference is REFERENCE_FACTOR times the dense
# baseline's value; a maximised objective (accuracy, a fraction) has reference 0.
REFERENCE_FACTOR = 2.0


def reference_point(
    baseline: Mapping[str, float], objectives: Sequence[tuple[str, str]]
) -> dict[str, float]:
    """The hypervolume reference point of a search: fixed by the dense baseline alone.

    For a minimised objective (size, latency) it is ``REFERENCE_FACTOR`` (2) times the
    baseline's value: a trial twice as large or slow as the uncompressed model adds nothing.
    For a maximised one (accuracy, a fraction in [0, 1]) it is 0. Because it depends on nothing
    the trials measure, the hypervolume of a growing set of trials can only grow.
    """
    pairs = [(str(m), str(d)) for m, d in objectives]
    _check_directions([d for _, d in pairs])
    ref: dict[str, float] = {}
    for metric, direction in pairs:
        if direction == "maximize":
            ref[metric] = 0.0
            continue
        value = baseline.get(metric)
        if value is None or not np.isfinite(value) or value <= 0:
            raise ReportError(
                f"the hypervolume reference of minimised objective {metric!r} is "
                f"{REFERENCE_FACTOR:g} x the dense baseline's value, which must be a positive "
                f"number, got {value!r} (baseline metrics: {sorted(baseline)}). Fix: log "
                f"baseline_{metric} on the search run (the orchestrator does when it measures "
                "the baseline)."
            )
        ref[metric] = REFERENCE_FACTOR * float(value)
    return ref


def hypervolume(
    df: pd.DataFrame,
    objectives: Sequence[tuple[str, str]],
    reference: Mapping[str, float],
) -> float:
    """Normalised hypervolume of the FINISHED trials of ``df`` against ``reference``.

    The values are the measured ones: no tolerance enters the hypervolume. Each objective is
    scaled to its reference: a maximised one as ``value / 1`` (accuracy is a
    fraction; reference 0), a minimised one as ``value / reference`` (reference 1). The result
    is the fraction of the box ``[0, 1] accuracy x [0, reference] per cost`` that the trials
    dominate: 0 with no useful trial, 1 for a perfect model of zero size and latency. Trials
    worse than the reference in some objective add nothing. Computed by moocore.
    """
    pairs = _check_objectives(df, objectives)
    missing = [m for m, _ in pairs if m not in reference]
    if missing:
        raise ReportError(
            f"the reference point needs a value for every objective; missing {missing} in "
            f"{dict(reference)}. Fix: build it with reference_point(baseline, objectives)."
        )
    values, eligible = _objective_values(df, pairs)
    pts = values[eligible]
    if len(pts) == 0:
        return 0.0
    scaled = np.empty_like(pts)
    ref = np.empty(len(pairs))
    for j, (metric, direction) in enumerate(pairs):
        if direction == "maximize":
            scaled[:, j] = pts[:, j] - reference[metric]
            ref[j] = 0.0
        else:
            scaled[:, j] = pts[:, j] / reference[metric]
            ref[j] = 1.0
    maximise = [d == "maximize" for _, d in pairs]
    return float(moocore.hypervolume(scaled, ref=ref, maximise=maximise))


def _objective_values(
    df: pd.DataFrame, pairs: Sequence[tuple[str, str]]
) -> tuple[np.ndarray, np.ndarray]:
    """Objective values (n x m float) and the mask of rows eligible for a front."""
    names = [m for m, _ in pairs]
    values = df[names].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    eligible = np.isfinite(values).all(axis=1)
    if "status" in df.columns:
        eligible &= (df["status"] == "FINISHED").to_numpy(dtype=bool)
    return values, eligible


def hypervolume_curve(
    df: pd.DataFrame,
    objectives: Sequence[tuple[str, str]],
    reference: Mapping[str, float],
    *,
    steps: Sequence[int] | None = None,
    tolerances: Mapping[str, Tolerance] | None = None,
) -> list[tuple[int, float, int]]:
    """Hypervolume and front size after each finished trial: (k, hypervolume, front size).

    The FINISHED trials of ``df`` are taken in the order they ended (column ``end_time`` when
    present, then ``trial_number``); point k covers the first k. ``steps`` restricts the k
    computed (default: 1..n). The hypervolume is of the measured values (no tolerance); the
    front size counts the noise-aware front (``tolerances``, as :func:`pareto_ranks`).
    """
    pairs = _check_objectives(df, objectives)
    finished = df if "status" not in df.columns else df[df["status"] == "FINISHED"]
    by = [c for c in ("end_time", "trial_number") if c in finished.columns]
    order = finished.sort_values(by, kind="stable", na_position="last") if by else finished
    wanted = range(1, len(order) + 1) if steps is None else steps
    out = []
    for k in wanted:
        subset = order.iloc[:k]
        size = front_size(subset, pairs, tolerances=tolerances)
        out.append((int(k), hypervolume(subset, pairs, reference), size))
    return out


def front_size(
    df: pd.DataFrame,
    objectives: Sequence[tuple[str, str]],
    *,
    tolerances: Mapping[str, Tolerance] | None = None,
) -> int:
    """How many eligible trials of ``df`` no other dominates (noise-aware): the size of the
    front :func:`pareto_ranks` marks, without ranking the rest."""
    pairs = _check_objectives(df, objectives)
    _, eligible = _objective_values(df, pairs)
    if not eligible.any():
        return 0
    dominates, _ = dominance(df[eligible], pairs, dict(tolerances or {}))
    return int((~dominates.any(axis=0)).sum())
