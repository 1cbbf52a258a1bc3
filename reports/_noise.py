"""Noise-aware dominance: two trials tie on an objective when they differ by less than the
measurement can tell apart (docs/noise.md).

One rule for every surface (live front, ``select``, ``report``, plots, notebook): the tolerance of
a pair of trials on an objective is

- ``exact`` (or 0): none;
- a relative number r: ``r x max(|a|, |b|)``;
- ``auto``, by metric: ``accuracy``: one validation sample, ``1 / val_samples``; a latency
  (``latency_ms``, ``latency_p90_ms``): the sum of the two trials' 95 % half-widths of the median,
  ``Z x latency_median_cv x value / sqrt(latency_blocks)`` each (the block medians' spread and
  count), so that the two intervals must not overlap, and at least the spread measured
  between replicates (``replicate_spread``: trials whose artifacts have the same format and the
  same bytes count, i.e. the same computation, measured at different times); a size, or any
  other metric: exact. A trial that lacks the figures the rule needs (an older record) gets no
  tolerance.

Trial A dominates trial B when A is no worse than B beyond the tolerance on every objective and
better beyond it on at least one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reports._errors import ReportError

TOLERANCES_TAG = "slimtune.tolerances"
# z of a two-sided 95 % interval, rounded up: the half-width of a latency median.
Z = 2.0
# Blocks assumed when a record lacks latency_blocks: the fewest a measurement takes (five).
MIN_BLOCKS = 5
LATENCY_METRICS = ("latency_ms", "latency_p90_ms")
# Replicates: the quantile of their pairwise relative differences taken as the latency floor,
# and the fewest replicate pairs that give one.
REPLICATE_QUANTILE = 0.9
MIN_REPLICATE_PAIRS = 2
# Float slack when comparing a difference with a tolerance (1/n accuracy steps are inexact).
_SLACK = 1e-9


@dataclass(frozen=True)
class Tolerance:
    """How far apart two values of ``metric`` may be and still tie: ``kind`` is ``auto``,
    ``exact`` or ``relative`` (then ``relative`` is the fraction, in (0, 1))."""

    metric: str
    kind: str = "auto"
    relative: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "exact", "relative"):
            raise ReportError(
                f"a tolerance kind must be auto, exact or relative, got {self.kind!r} for "
                f"{self.metric!r}"
            )
        if self.kind == "relative" and not 0 < self.relative < 1:
            raise ReportError(
                f"a relative tolerance must be in (0, 1), got {self.relative!r} for "
                f"{self.metric!r}. Fix: write e.g. 0.05 (5 %), or exact"
            )

    @classmethod
    def parse(cls, metric: str, text: str) -> Tolerance:
        text = text.strip()
        if text in ("auto", "exact"):
            return cls(metric, text)
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if value == 0:
            return cls(metric, "exact")
        if not 0 < value < 1:
            raise ReportError(
                f"the tolerance of {metric!r} must be auto, exact or a number in [0, 1), got "
                f"{text!r}. Fix: write tolerance: auto, exact or e.g. 0.05"
            )
        return cls(metric, "relative", value)

    @property
    def text(self) -> str:
        return f"{self.relative:g}" if self.kind == "relative" else self.kind

    def describe(self) -> str:
        """The rule in words, as the report and the parent run's tags say it."""
        if self.kind == "exact":
            return "exact"
        if self.kind == "relative":
            return f"{100 * self.relative:g} % of the larger value"
        if self.metric == "accuracy":
            return "auto: one validation sample (1 / val_samples)"
        if self.metric in LATENCY_METRICS:
            return (
                f"auto: the two medians' 95 % intervals do not overlap (half-width {Z:g} x "
                "latency_median_cv x median / sqrt(latency_blocks)), and they differ by more "
                f"than the {REPLICATE_QUANTILE:.0%} quantile of the relative differences "
                "between replicates (same format, same size)"
            )
        return "auto: exact (a measured size or count)"


def parse_tolerances(tag: str | None, metrics: Sequence[str]) -> dict[str, Tolerance]:
    """The ``slimtune.tolerances`` tag (``"accuracy:auto,latency_ms:0.05,..."``) as a tolerance
    per metric; metrics the tag does not name (or no tag: a search from before tolerances) get
    ``auto``, the default of the config."""
    out = {m: Tolerance(m) for m in metrics}
    if not tag:
        return out
    for item in tag.split(","):
        name, sep, text = (part.strip() for part in item.partition(":"))
        if not sep or not name:
            raise ReportError(
                f"the {TOLERANCES_TAG} tag must be a comma-separated list of metric:tolerance, "
                f"got {tag!r} (bad item {item.strip()!r}); e.g. 'accuracy:auto,latency_ms:0.05'"
            )
        if name in out:
            out[name] = Tolerance.parse(name, text)
    return out


def _column(df: pd.DataFrame, name: str) -> np.ndarray:
    if name not in df.columns:
        return np.full(len(df), np.nan)
    return pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=float)


def pair_tolerance(df: pd.DataFrame, tolerance: Tolerance) -> np.ndarray:
    """The n x n matrix of tolerances between the rows of ``df`` on ``tolerance.metric``."""
    n = len(df)
    values = _column(df, tolerance.metric)
    if tolerance.kind == "exact":
        return np.zeros((n, n))
    if tolerance.kind == "relative":
        mag = np.abs(values)
        return tolerance.relative * np.maximum.outer(mag, mag)
    if tolerance.metric == "accuracy":
        step = 1.0 / _column(df, "val_samples")
        step = np.where(np.isfinite(step) & (step > 0), step, 0.0)
        return np.maximum.outer(step, step)
    if tolerance.metric in LATENCY_METRICS:
        half = latency_half_width(df, tolerance.metric)
        floor = replicate_spread(df, tolerance.metric).relative
        # Like the interval, the floor needs the noise figures: records from before them (no
        # latency_median_cv) get no tolerance.
        has = ~np.isnan(_column(df, "latency_median_cv"))
        mag = np.where(np.isfinite(values), np.abs(values), 0.0)
        pair = floor * np.maximum.outer(mag, mag) * np.logical_and.outer(has, has)
        return np.maximum(np.add.outer(half, half), pair)
    return np.zeros((n, n))


@dataclass(frozen=True)
class ReplicateSpread:
    """How far apart the same computation measured: ``relative`` is the ``REPLICATE_QUANTILE``
    of ``|a - b| / max(a, b)`` over ``pairs`` pairs of replicates (0 with fewer than
    ``MIN_REPLICATE_PAIRS``), from ``groups`` groups of replicates."""

    relative: float
    pairs: int
    groups: int


def replicate_spread(df: pd.DataFrame, metric: str = "latency_ms") -> ReplicateSpread:
    """The spread of ``metric`` between replicates: FINISHED rows (with the noise figures,
    ``latency_median_cv``) whose artifacts have the same ``format`` and ``size_bytes`` run the
    same computation in ONNX Runtime (sizes are exact and depend on the structure only;
    unstructured zeros are stored), so any difference between their latencies is measurement
    noise across time (other load, frequency, caches), which a single measurement's own
    spread (``latency_half_width``) cannot see."""
    needed = {metric, "size_bytes", "format", "latency_median_cv"}
    if not needed <= set(df.columns) or not len(df):
        return ReplicateSpread(0.0, 0, 0)
    rows = df
    if "status" in df.columns:
        rows = df[df["status"] == "FINISHED"]
    values = pd.to_numeric(rows[metric], errors="coerce")
    sizes = pd.to_numeric(rows["size_bytes"], errors="coerce")
    cv = pd.to_numeric(rows["latency_median_cv"], errors="coerce")
    keep = values.notna() & np.isfinite(values) & (values > 0) & sizes.notna() & cv.notna()
    frame = pd.DataFrame(
        {"v": values[keep], "size": sizes[keep], "format": rows["format"][keep].astype(str)}
    )
    diffs: list[float] = []
    groups = 0
    for _, group in frame.groupby(["format", "size"], sort=False):
        v = group["v"].to_numpy(dtype=float)
        if len(v) < 2:
            continue
        groups += 1
        rel = np.abs(np.subtract.outer(v, v)) / np.maximum.outer(v, v)
        diffs.extend(rel[np.triu_indices(len(v), k=1)].tolist())
    if len(diffs) < MIN_REPLICATE_PAIRS:
        return ReplicateSpread(0.0, len(diffs), groups)
    relative = float(np.quantile(diffs, REPLICATE_QUANTILE))
    return ReplicateSpread(relative, len(diffs), groups)


def latency_half_width(df: pd.DataFrame, metric: str = "latency_ms") -> np.ndarray:
    """Per row: ``Z x latency_median_cv x value / sqrt(latency_blocks)``, the half-width of the
    median's 95 % interval; 0 where the record lacks the CV, ``inf`` where the CV is infinite
    (fewer than two blocks: the median is unknown)."""
    values = _column(df, metric)
    cv = _column(df, "latency_median_cv")
    blocks = _column(df, "latency_blocks")
    blocks = np.where(np.isfinite(blocks) & (blocks >= 2), blocks, MIN_BLOCKS)
    with np.errstate(invalid="ignore"):
        half = Z * cv * np.abs(values) / np.sqrt(blocks)
    half = np.where(np.isposinf(cv), np.inf, half)
    return np.where(np.isnan(half), 0.0, half)


def _signed(df: pd.DataFrame, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """Objective values turned so that larger is better (n x m)."""
    cols = [_column(df, m) * (1.0 if d == "maximize" else -1.0) for m, d in pairs]
    return np.column_stack(cols) if cols else np.zeros((len(df), 0))


def dominance(
    df: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    tolerances: Mapping[str, Tolerance],
) -> tuple[np.ndarray, np.ndarray]:
    """``(dominates, tied)``, both n x n bool: ``dominates[i, j]`` when row i dominates row j
    under the tolerances, ``tied[i, j]`` when they are within tolerance on every objective."""
    signed = _signed(df, pairs)
    n = len(df)
    no_worse = np.ones((n, n), dtype=bool)
    better = np.zeros((n, n), dtype=bool)
    for k, (metric, _) in enumerate(pairs):
        tol = pair_tolerance(df, tolerances.get(metric, Tolerance(metric)))
        tol = tol * (1 + _SLACK) + _SLACK * np.maximum.outer(
            np.abs(signed[:, k]), np.abs(signed[:, k])
        )
        diff = np.subtract.outer(signed[:, k], signed[:, k])  # > 0: row i better than row j
        with np.errstate(invalid="ignore"):
            no_worse &= ~(diff < -tol)
            better |= diff > tol
    dominates = no_worse & better
    np.fill_diagonal(dominates, False)
    tied = no_worse & no_worse.T
    return dominates, tied


def noise_ranks(
    df: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    tolerances: Mapping[str, Tolerance],
) -> np.ndarray:
    """Non-dominated sorting under noise-aware dominance: 0 for the rows no row dominates, 1 for
    those only rank-0 rows dominate, and so on (every row of ``df`` is ranked; pass eligible
    rows only). Should the tolerances make a cycle of dominance, its rows share the next rank."""
    dominates, _ = dominance(df, pairs, tolerances)
    return peel(dominates)


def peel(dominates: np.ndarray) -> np.ndarray:
    """Non-dominated sorting of an n x n ``dominates`` matrix (see :func:`noise_ranks`)."""
    n = len(dominates)
    ranks = np.full(n, -1, dtype=np.int64)
    left = np.ones(n, dtype=bool)
    beaten_by = dominates.sum(axis=0)  # how many rows left dominate each row
    rank = 0
    while left.any():
        layer = np.flatnonzero(left & (beaten_by == 0))
        if len(layer) == 0:  # a cycle: everything left is beaten by something left
            layer = np.flatnonzero(left)
        ranks[layer] = rank
        left[layer] = False
        beaten_by = beaten_by - dominates[layer].sum(axis=0)
        rank += 1
    return ranks


def tie_groups(df: pd.DataFrame, tied: np.ndarray) -> tuple[np.ndarray, list[list[int]]]:
    """Groups of rows linked by ties (connected components of ``tied``), each with its
    representative first: the smallest file (``size_bytes``, then ``size_gzip_bytes``), then the
    highest accuracy, then the lowest trial number. Returns (group id per row, groups)."""
    n = len(df)
    group = np.full(n, -1, dtype=np.int64)
    groups: list[list[int]] = []
    for start in range(n):
        if group[start] >= 0:
            continue
        members, stack = [], [start]
        group[start] = len(groups)
        while stack:
            i = stack.pop()
            members.append(i)
            for j in np.flatnonzero(tied[i] & (group < 0)):
                group[j] = len(groups)
                stack.append(int(j))
        groups.append(sorted(members, key=lambda i: _display_key(df, i)))
    return group, groups


def _display_key(df: pd.DataFrame, i: int) -> tuple[float, ...]:
    def num(name: str, sign: float = 1.0) -> float:
        if name not in df.columns:
            return math.inf
        value = pd.to_numeric(pd.Series([df[name].iloc[i]]), errors="coerce").iloc[0]
        return sign * float(value) if pd.notna(value) else math.inf

    return (num("size_bytes"), num("size_gzip_bytes"), num("accuracy", -1.0), num("trial_number"))


def tolerance_summary(
    objectives: Sequence[tuple[str, str]],
    tolerances: Mapping[str, Tolerance],
    finished: pd.DataFrame,
) -> dict[str, str]:
    """Per objective, the tolerance rule and what it gave on ``finished`` (the parent run's
    ``tolerance.<metric>`` tags), e.g. ``"auto: one validation sample (1 / val_samples);
    0.00278"``."""
    out: dict[str, str] = {}
    for metric, _ in objectives:
        tol = tolerances.get(metric, Tolerance(metric))
        text = tol.describe()
        if len(finished) and tol.kind == "auto" and metric == "accuracy":
            steps = pair_tolerance(finished, tol).diagonal()
            positive = steps[steps > 0]
            found = f"{float(np.median(positive)):.4g}" if len(positive) else "0 (no val_samples)"
            text += f"; {found}"
        elif len(finished) and tol.kind == "auto" and metric in LATENCY_METRICS:
            half = latency_half_width(finished, metric)
            finite = half[np.isfinite(half)]
            if len(finite):
                text += f"; median half-width {float(np.median(finite)):.3g} ms"
            spread = replicate_spread(finished, metric)
            if spread.relative > 0:
                text += (
                    f"; replicates differ by up to {spread.relative:.0%} "
                    f"({REPLICATE_QUANTILE:.0%} of {spread.pairs} pairs in {spread.groups} "
                    "groups of same-format, same-size artifacts): at least that apart"
                )
        out[metric] = text
    return out
