"""Choosing the trial to deploy: the most accurate one that meets the user's budget."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from reports._errors import ReportError
from searchspace import ConfigError

BYTES_PER_KB = 1000  # sizes are reported in decimal kilobytes: 1 KB = 1000 bytes

# name -> (metric column, bound kind, factor from the metric's unit to the constraint's unit)
_TABLE: dict[str, tuple[str, Literal["min", "max"], float]] = {
    "min_accuracy": ("accuracy", "min", 1.0),
    "max_size_kb": ("size_bytes", "max", 1.0 / BYTES_PER_KB),
    "max_latency_ms": ("latency_ms", "max", 1.0),
}
# Ranking of feasible trials: accuracy first, then lower latency, then smaller file.
_RANK_COLUMNS = ("accuracy", "latency_ms", "size_bytes")


@dataclass(frozen=True)
class Constraints:
    """A deployment budget. ``None`` leaves a dimension free.

    ``min_accuracy`` is a fraction in [0, 1] (0.97, not 97). ``max_size_kb`` bounds
    ``size_bytes``, the size of the ONNX file that ships (not its gzip size), in decimal
    kilobytes: 1 KB = 1000 bytes. ``max_latency_ms`` bounds ``latency_ms``, the median batch-1
    latency in ONNX Runtime.
    """

    min_accuracy: float | None = None
    max_size_kb: float | None = None
    max_latency_ms: float | None = None

    def __post_init__(self) -> None:
        for name, value in self.active().items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(
                    field=name,
                    value=value,
                    rule="it must be a number",
                    fix=f"pass a number or None for {name}",
                    source="Constraints",
                )
            if not math.isfinite(value):
                raise ConfigError(
                    field=name,
                    value=value,
                    rule="it must be a finite number",
                    fix=f"pass a finite number, or None to leave {name} unconstrained",
                    source="Constraints",
                )
        acc = self.min_accuracy
        if acc is not None and acc > 1:
            raise ConfigError(
                field="min_accuracy",
                value=acc,
                rule="accuracy is a fraction in [0, 1]",
                fix=f"give accuracy as a fraction, e.g. 0.97 (did you mean {acc / 100:g}?)",
                source="Constraints",
            )
        if acc is not None and acc < 0:
            raise ConfigError(
                field="min_accuracy",
                value=acc,
                rule="accuracy is a fraction in [0, 1]",
                fix="give accuracy as a fraction, e.g. 0.97",
                source="Constraints",
            )
        for name, unit, example in (
            ("max_size_kb", "kilobytes (1 KB = 1000 bytes)", "500"),
            ("max_latency_ms", "milliseconds", "2.0"),
        ):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(
                    field=name,
                    value=value,
                    rule="it must be > 0",
                    fix=f"give a positive number of {unit}, e.g. {example}",
                    source="Constraints",
                )

    def active(self) -> dict[str, float]:
        """The constraints that are set, by name."""
        values = {
            "min_accuracy": self.min_accuracy,
            "max_size_kb": self.max_size_kb,
            "max_latency_ms": self.max_latency_ms,
        }
        return {k: v for k, v in values.items() if v is not None}

    def describe(self) -> str:
        """Human-readable form, e.g. ``min_accuracy >= 0.97, max_latency_ms <= 2``."""
        parts = [
            f"{name} {'>=' if _TABLE[name][1] == 'min' else '<='} {bound:g}"
            for name, bound in self.active().items()
        ]
        return ", ".join(parts) if parts else "no constraints"


@dataclass(frozen=True, eq=False)
class Selection:
    """The chosen trial, how many trials were feasible, and the next best ones."""

    chosen: pd.Series
    feasible: int
    runners_up: pd.DataFrame
    constraints: Constraints = field(default_factory=Constraints)
    considered: int = 0  # finished trials looked at

    @property
    def reason(self) -> str:
        """Why this trial was chosen, in one paragraph (for a decision record)."""
        c = self.chosen
        text = (
            f"trial {_trial_label(c)} has the highest accuracy ({c['accuracy']:.4f}) of the "
            f"{self.feasible} of {self.considered} finished trials that meet "
            f"{self.constraints.describe()}; latency_ms={c['latency_ms']:.4g}, "
            f"size_bytes={_int_or_nan(c['size_bytes'])} (ONNX file, 1 KB = 1000 bytes)."
        )
        if len(self.runners_up) and self.runners_up.iloc[0]["accuracy"] == c["accuracy"]:
            text += " Ties on accuracy are broken by lower latency_ms, then smaller size_bytes."
        return text


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
    ) -> None:
        self.constraints = constraints
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
                f"misses {name} by {_miss(name, c, self.constraints)} ({100 * v:.1f}% of the bound)"
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


def select(df: pd.DataFrame, constraints: Constraints) -> Selection:
    """Choose among FINISHED trials meeting every constraint the most accurate one.

    Ties on accuracy go to the lower ``latency_ms``, then the smaller ``size_bytes``, then the
    lower ``trial_number``. A trial with a missing value for a constrained metric does not
    meet that constraint. Raises :class:`NoFeasibleTrial` when no trial qualifies.
    """
    missing = [c for c in _RANK_COLUMNS if c not in df.columns]
    if missing:
        raise ReportError(
            f"select needs the columns {list(_RANK_COLUMNS)}; missing {missing} "
            f"(columns are {list(df.columns)}); pass the trials table of load_search"
        )
    finished = df if "status" not in df.columns else df[df["status"] == "FINISHED"]
    finished = finished[np.isfinite(_num(finished["accuracy"]))]
    considered = len(finished)

    ok = pd.Series(True, index=finished.index)
    excluded: dict[str, int] = {}
    violation = pd.DataFrame(index=finished.index)
    for name, bound in constraints.active().items():
        metric, kind, factor = _TABLE[name]
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
                near = _ranked(finished.loc[finite.index].assign(_violation=finite), "_violation")
                best = near.index[0]
                closest = finished.loc[best]
                violations = {k: float(v) for k, v in violation.loc[best].items()}
        raise NoFeasibleTrial(
            constraints=constraints,
            considered=considered,
            excluded=excluded,
            closest=closest,
            violations=violations,
        )

    ranked = _ranked(feasible)
    return Selection(
        chosen=ranked.iloc[0],
        feasible=len(ranked),
        runners_up=ranked.iloc[1:4],
        constraints=constraints,
        considered=considered,
    )


def _ranked(df: pd.DataFrame, *first: str) -> pd.DataFrame:
    """Sort best first: ``first`` columns ascending, then accuracy down, latency, size, number."""
    order = [*first, *(c for c in (*_RANK_COLUMNS, "trial_number") if c in df.columns)]
    ascending = [c != "accuracy" for c in order]
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


def _miss(name: str, row: pd.Series, constraints: Constraints) -> str:
    metric, kind, factor = _TABLE[name]
    bound = constraints.active()[name]
    value = float(row[metric]) * factor
    gap = bound - value if kind == "min" else value - bound
    unit = {"max_size_kb": " KB", "max_latency_ms": " ms"}.get(name, "")
    return f"{gap:.4g}{unit}"
