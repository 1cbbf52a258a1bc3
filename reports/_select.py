"""Choosing the trial to deploy: the most accurate one that meets the user's budget."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from reports._constraints import Bounds, Constraints
from reports._errors import ReportError

# Ranking of feasible trials: the optimized metric first, then accuracy, lower latency, smaller
# file (each in its own direction), then the lower trial number.
_RANK_COLUMNS = ("accuracy", "latency_ms", "size_bytes")
# Which way each metric is better; ``select(optimize=...)`` takes one of these.
OPTIMIZABLE: dict[str, Literal["maximize", "minimize"]] = {
    "accuracy": "maximize",
    "size_bytes": "minimize",
    "size_gzip_bytes": "minimize",
    "latency_ms": "minimize",
    "latency_p90_ms": "minimize",
}


@dataclass(frozen=True, eq=False)
class Selection:
    """The chosen trial, how many trials were feasible, and the next best ones."""

    chosen: pd.Series
    feasible: int
    runners_up: pd.DataFrame
    constraints: Constraints = field(default_factory=Constraints)
    considered: int = 0  # finished trials looked at
    optimize: str = "accuracy"
    bounds: Bounds = field(default_factory=dict)  # the constraints as applied

    @property
    def reason(self) -> str:
        """Why this trial was chosen, in one paragraph (for a decision record)."""
        c = self.chosen
        opt = self.optimize
        best = "highest" if OPTIMIZABLE[opt] == "maximize" else "lowest"
        text = (
            f"trial {_trial_label(c)} has the {best} {opt} ({_fmt(c[opt])}) of the "
            f"{self.feasible} of {self.considered} finished trials that meet "
            f"{self.describe_bounds()}; accuracy={c['accuracy']:.4f}, "
            f"latency_ms={c['latency_ms']:.4g}, "
            f"size_bytes={_int_or_nan(c['size_bytes'])} (ONNX file, 1 KB = 1000 bytes)."
        )
        if len(self.runners_up) and self.runners_up.iloc[0][opt] == c[opt]:
            rest = [k for k in _rank_order(opt) if k != opt]
            text += (
                f" Ties on {opt} are broken by "
                + ", then ".join(
                    f"{'higher' if OPTIMIZABLE[k] == 'maximize' else 'lower'} {k}" for k in rest
                )
                + "."
            )
        return text

    def describe_bounds(self) -> str:
        """The constraints with relative ones resolved, e.g. ``max_accuracy_drop <= 1 points
        (accuracy >= 0.975)``."""
        if not self.bounds:
            return self.constraints.describe()
        parts = []
        for name, (metric, kind, _factor, bound) in self.bounds.items():
            if name == "max_accuracy_drop":
                value = self.constraints.active()[name]
                parts.append(f"{name} <= {value:g} points ({metric} >= {bound:.4g})")
            else:
                parts.append(f"{name} {'>=' if kind == 'min' else '<='} {bound:g}")
        return ", ".join(parts) if parts else "no constraints"

    def why_lost(self, runner: pd.Series) -> str:
        """Why ``runner`` (a feasible trial) ranks below the chosen one, in a phrase."""
        c = self.chosen
        for key in _rank_order(self.optimize):
            if key not in runner.index or key not in c.index:
                continue
            a, b = float(runner[key]), float(c[key])
            if a == b or (math.isnan(a) and math.isnan(b)):
                continue
            worse = "lower" if OPTIMIZABLE.get(key, "minimize") == "maximize" else "higher"
            tie = "" if key == self.optimize else f" at equal {self.optimize}"
            return f"{worse} {key} ({_fmt(a)} vs {_fmt(b)}){tie}"
        return "identical on every ranking metric; the chosen trial has the lower trial number"


class NoFeasibleTrial(ReportError):
    """No finished trial meets every constraint.

    Attributes: ``excluded`` (constraint name -> how many finished trials it excludes on its
    own), ``most_excluding`` (the name of the constraint that excludes the most, or None),
    ``closest`` (the trial with the smallest total normalized violation, or None), its
    ``violations`` (constraint name -> relative violation, e.g. 0.1 = 10% beyond the bound),
    ``considered`` (finished trials) and ``constraints``.
    """

    def __init__(
        self,
        *,
        constraints: Constraints,
        considered: int,
        excluded: dict[str, int],
        closest: pd.Series | None,
        violations: dict[str, float],
        bounds: Bounds | None = None,
    ) -> None:
        self.constraints = constraints
        self.bounds = bounds if bounds is not None else constraints.bounds()
        self.considered = considered
        self.excluded = excluded
        self.most_excluding = max(excluded, key=lambda k: excluded[k]) if excluded else None
        self.closest = closest
        self.violations = violations
        super().__init__(self._format())

    def _format(self) -> str:
        if self.considered == 0:
            return (
                "no finished trial to choose from: the search has no trial with status FINISHED "
                "and an accuracy. Fix: let the search finish some trials (see the failed runs' "
                "slimtune.error tags)."
            )
        counts = ", ".join(f"{name} {n} of {self.considered}" for name, n in self.excluded.items())
        text = (
            f"no finished trial meets every constraint ({self.constraints.describe()}) among "
            f"{self.considered} finished trials. Trials each constraint excludes: {counts}; "
            f"{self.most_excluding} excludes the most."
        )
        if self.closest is not None:
            c = self.closest
            misses = "; ".join(
                f"misses {name} by {_miss(name, c, self.bounds[name])} "
                f"({100 * v:.1f}% of the bound)"
                for name, v in self.violations.items()
                if v > 0
            )
            text += (
                f" Closest: trial {_trial_label(c)} with accuracy={c['accuracy']:.4f}, "
                f"size_bytes={_int_or_nan(c['size_bytes'])}, "
                f"latency_ms={c['latency_ms']:.4g}, which {misses}."
            )
        text += (
            f" Fix: relax {self.most_excluding} (or the bounds the closest trial misses), or run "
            "more trials."
        )
        return text


def select(
    df: pd.DataFrame,
    constraints: Constraints,
    *,
    optimize: str = "accuracy",
    baseline: Mapping[str, float] | None = None,
) -> Selection:
    """Choose among FINISHED trials meeting every constraint the best one on ``optimize``.

    ``optimize`` is one of :data:`OPTIMIZABLE` (accuracy is maximized, sizes and latencies
    minimized). Ties go to the higher accuracy, the lower ``latency_ms``, the smaller
    ``size_bytes``, then the lower ``trial_number``. A trial with a missing value for a
    constrained metric does not meet that constraint. ``baseline`` (the parent's ``baseline_*``
    metrics without the prefix) resolves relative constraints (``max_accuracy_drop``). Raises
    :class:`NoFeasibleTrial` when no trial qualifies.
    """
    if optimize not in OPTIMIZABLE:
        raise ReportError(
            f"optimize must be one of {sorted(OPTIMIZABLE)}, got {optimize!r}. Fix: pass the "
            "metric to make best among the trials that meet the constraints, e.g. accuracy."
        )
    needed = list(dict.fromkeys([*_RANK_COLUMNS, optimize]))
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ReportError(
            f"select needs the columns {needed}; missing {missing} "
            f"(columns are {list(df.columns)}); pass the trials table of load_search"
        )
    bounds = constraints.bounds(baseline)
    absent = [b[0] for b in bounds.values() if b[0] not in df.columns]
    if absent:
        raise ReportError(
            f"the constraints need the metric columns {absent}, which the trials table lacks "
            f"(columns are {list(df.columns)}). Fix: drop those constraints or pass the "
            "trials table of load_search."
        )
    finished = df if "status" not in df.columns else df[df["status"] == "FINISHED"]
    finished = finished[np.isfinite(_num(finished["accuracy"]))]
    considered = len(finished)

    ok = pd.Series(True, index=finished.index)
    excluded: dict[str, int] = {}
    violation = pd.DataFrame(index=finished.index)
    for name, (metric, kind, factor, bound) in bounds.items():
        value = _num(finished[metric]) * factor
        meets = value >= bound if kind == "min" else value <= bound
        excess = (bound - value) if kind == "min" else (value - bound)
        rel = (excess / bound if bound > 0 else excess).clip(lower=0.0)
        violation[name] = rel.where(np.isfinite(value), np.inf)
        ok &= meets.fillna(False)
        excluded[name] = int((~meets.fillna(False)).sum())

    feasible = finished[ok]
    if feasible.empty:
        closest, violations = None, {}
        if considered:
            total = violation.sum(axis=1)
            finite = total[np.isfinite(total)]
            if not finite.empty:
                # Equal violations: the trial select would rank higher.
                near = _ranked(
                    finished.loc[finite.index].assign(_violation=finite), optimize, "_violation"
                )
                best = near.index[0]
                closest = finished.loc[best]
                violations = {k: float(v) for k, v in violation.loc[best].items()}
        raise NoFeasibleTrial(
            constraints=constraints,
            considered=considered,
            excluded=excluded,
            closest=closest,
            violations=violations,
            bounds=bounds,
        )

    ranked = _ranked(feasible, optimize)
    return Selection(
        chosen=ranked.iloc[0],
        feasible=len(ranked),
        runners_up=ranked.iloc[1:4],
        constraints=constraints,
        considered=considered,
        optimize=optimize,
        bounds=bounds,
    )


def _rank_order(optimize: str) -> list[str]:
    return list(dict.fromkeys([optimize, *_RANK_COLUMNS]))


def _ranked(df: pd.DataFrame, optimize: str = "accuracy", *first: str) -> pd.DataFrame:
    """Sort best first: ``first`` columns ascending, then ``optimize`` in its direction, then
    accuracy down, latency, size, trial number up."""
    keys = [*first, *_rank_order(optimize), "trial_number"]
    order = [c for c in dict.fromkeys(keys) if c in df.columns]
    ascending = [OPTIMIZABLE.get(c) != "maximize" for c in order]
    return df.sort_values(order, ascending=ascending, na_position="last", kind="stable")


def _num(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s, errors="coerce").astype(float)


def _trial_label(row: pd.Series) -> str:
    number = row.get("trial_number")
    run = row.get("run_id")
    label = str(number) if number is not None and not pd.isna(number) else str(row.name)
    return f"{label} (run {run})" if run is not None else label


def _int_or_nan(value: object) -> str:
    v = float(value)  # type: ignore[arg-type]
    return str(int(v)) if math.isfinite(v) else "nan"


def _miss(name: str, row: pd.Series, bound_of: tuple[str, str, float, float]) -> str:
    metric, kind, factor, bound = bound_of
    value = float(row[metric]) * factor
    gap = bound - value if kind == "min" else value - bound
    unit = {"max_size_kb": " KB", "max_gzip_kb": " KB"}.get(name, "")
    unit = " ms" if name.startswith("max_latency") else unit
    return f"{gap:.4g}{unit}"


def _fmt(value: object) -> str:
    v = float(value)  # type: ignore[arg-type]
    return str(int(v)) if math.isfinite(v) and v.is_integer() and abs(v) >= 1000 else f"{v:.4g}"
