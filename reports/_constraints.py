"""The user's budget for choosing a trial to deploy: bounds on accuracy, size and latency."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from reports._errors import ReportError
from searchspace import ConfigError

BYTES_PER_KB = 1000  # sizes are reported in decimal kilobytes: 1 KB = 1000 bytes

# name -> (metric column, bound kind, factor from the metric's unit to the constraint's unit)
_TABLE: dict[str, tuple[str, Literal["min", "max"], float]] = {
    "min_accuracy": ("accuracy", "min", 1.0),
    "max_accuracy_drop": ("accuracy", "min", 1.0),  # bound: baseline accuracy - drop / 100
    "max_size_kb": ("size_bytes", "max", 1.0 / BYTES_PER_KB),
    "max_gzip_kb": ("size_gzip_bytes", "max", 1.0 / BYTES_PER_KB),
    "max_latency_ms": ("latency_ms", "max", 1.0),
    "max_latency_p90_ms": ("latency_p90_ms", "max", 1.0),
}
# name -> (metric, kind, factor, bound in the constraint's unit)
Bounds = dict[str, tuple[str, Literal["min", "max"], float, float]]


@dataclass(frozen=True)
class Constraints:
    """A deployment budget. ``None`` leaves a dimension free.

    ``min_accuracy`` is a fraction in [0, 1] (0.97, not 97). ``max_size_kb`` bounds
    ``size_bytes``, the size of the ONNX file that ships (not its gzip size), in decimal
    kilobytes: 1 KB = 1000 bytes. ``max_latency_ms`` bounds ``latency_ms``, the median batch-1
    latency in ONNX Runtime. ``max_accuracy_drop`` is relative to the dense baseline, in
    percentage points: 1.0 means ``accuracy >= baseline_accuracy - 0.01`` (``select`` needs the
    baseline for it). ``max_gzip_kb`` bounds ``size_gzip_bytes`` and ``max_latency_p90_ms``
    bounds ``latency_p90_ms``, in the same units.
    """

    min_accuracy: float | None = None
    max_size_kb: float | None = None
    max_latency_ms: float | None = None
    max_accuracy_drop: float | None = None
    max_gzip_kb: float | None = None
    max_latency_p90_ms: float | None = None

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
        drop = self.max_accuracy_drop
        if drop is not None and not 0 <= drop <= 100:
            raise ConfigError(
                field="max_accuracy_drop",
                value=drop,
                rule="it is in percentage points of accuracy, in [0, 100]",
                fix="give the drop from the baseline in points, e.g. 1.0 for one point",
                source="Constraints",
            )
        for name, unit, example in (
            ("max_size_kb", "kilobytes (1 KB = 1000 bytes)", "500"),
            ("max_gzip_kb", "kilobytes (1 KB = 1000 bytes)", "200"),
            ("max_latency_ms", "milliseconds", "2.0"),
            ("max_latency_p90_ms", "milliseconds", "2.5"),
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
        values = {name: getattr(self, name) for name in _TABLE}
        return {k: v for k, v in values.items() if v is not None}

    def describe(self) -> str:
        """Human-readable form, e.g. ``min_accuracy >= 0.97, max_latency_ms <= 2``."""
        parts = [
            f"{name} {'<=' if name == 'max_accuracy_drop' or _TABLE[name][1] == 'max' else '>='} "
            f"{bound:g}" + (" points" if name == "max_accuracy_drop" else "")
            for name, bound in self.active().items()
        ]
        return ", ".join(parts) if parts else "no constraints"

    def bounds(self, baseline: Mapping[str, float] | None = None) -> Bounds:
        """Each active constraint as (metric, kind, factor, bound); relative ones resolved.

        ``max_accuracy_drop`` becomes ``accuracy >= baseline["accuracy"] - drop / 100``; it
        needs ``baseline`` (the parent run's ``baseline_*`` metrics without the prefix).
        """
        out: Bounds = {}
        for name, value in self.active().items():
            metric, kind, factor = _TABLE[name]
            if name == "max_accuracy_drop":
                base = (baseline or {}).get("accuracy")
                if base is None or not math.isfinite(base):
                    raise ReportError(
                        f"max_accuracy_drop={value:g} is relative to the dense baseline's "
                        f"accuracy, but the search has none (baseline metrics: "
                        f"{sorted(baseline or {})}). Fix: use --min-accuracy, or select from "
                        "a search whose parent run logs baseline_accuracy."
                    )
                value = base - value / 100
            out[name] = (metric, kind, factor, float(value))
        return out
