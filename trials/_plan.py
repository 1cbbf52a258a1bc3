"""The compression plan: one value object that says, layer by layer, how a trial compresses.

``CompressionPlan`` maps each prunable/quantizable layer (a Conv/Linear module, by its name in
``model.named_modules()``) to a ``LayerSetting``: the format its weight is stored in and the
fraction of its output units structured pruning keeps. Pruning, fake quantization, the export,
the export claim check and the trial record all read the plan; a uniform trial is the plan with
the same setting everywhere (``CompressionPlan.uniform``), a mixed one comes from the allocator
(``trials._plan_allocate``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from searchspace import BUDGET_METRICS, ConfigError

PLAN_VERSION = 1
# Per-layer formats: the real ONNX Runtime ones, then the simulated widths (fp32 files holding
# weights fake-quantized on a 2**bits - 1 level grid).
FORMAT_BITS: dict[str, int] = {
    "fp32": 32,
    "fp16": 16,
    "int8": 8,
    "int4": 4,
    **{f"sim{b}": b for b in (2, 3, 5, 6, 7)},
}
# Formats a mixed plan may give a layer: the ones with a real per-layer artifact in ORT.
MIXED_FORMATS = ("fp32", "fp16", "int8", "int4")
PLAN_KINDS = ("uniform", "mixed")


def format_of_bits(bits: int) -> str:
    """The per-layer format of a uniform bit-width (``8 -> int8``, ``3 -> sim3``)."""
    for name, width in FORMAT_BITS.items():
        if width == bits:
            return name
    raise ConfigError(
        field="bits",
        value=bits,
        rule=f"a layer's bit-width must be one of {sorted(set(FORMAT_BITS.values()))}",
        fix="search one of those bit-widths",
        source="CompressionPlan",
    )


@dataclass(frozen=True)
class LayerSetting:
    """How one layer is compressed: ``format`` (a key of ``FORMAT_BITS``) and ``keep``, the
    fraction of its output units structured pruning keeps (1.0: the whole width)."""

    format: str
    keep: float = 1.0

    def __post_init__(self) -> None:
        if self.format not in FORMAT_BITS:
            _fail("format", self.format, f"it must be one of {list(FORMAT_BITS)}")
        keep = self.keep
        if isinstance(keep, bool) or not isinstance(keep, int | float) or not 0 < keep <= 1:
            _fail("keep", keep, "it must be a number in (0, 1] (the kept share of the width)")

    @property
    def bits(self) -> int:
        return FORMAT_BITS[self.format]


@dataclass(frozen=True)
class CompressionPlan:
    """Each layer's setting, in module order, plus how the plan was made: ``kind`` (uniform or
    mixed) and, for a mixed plan, ``budget`` (the target as a fraction of the dense artifact's
    size or latency, as ``budget_metric`` says), ``target_bytes`` or ``target_ms`` (that target),
    ``predicted_bytes`` (the size prediction for the artifact), ``predicted_ms`` (the latency
    prediction, from ``latency_table``: the per-layer latencies measured in ONNX Runtime that the
    allocator worked from, ``trials._plan_latency.LatencyTable.to_dict``) and ``predicted_loss``
    (the summed sensitivity of the settings chosen)."""

    layers: tuple[tuple[str, LayerSetting], ...]
    kind: str = "uniform"
    budget: float | None = None
    predicted_bytes: int | None = None
    predicted_loss: float | None = None
    target_bytes: int | None = None
    budget_metric: str = "size"
    predicted_ms: float | None = None
    target_ms: float | None = None
    latency_table: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.layers, list | dict):
            items = self.layers.items() if isinstance(self.layers, dict) else self.layers
            object.__setattr__(self, "layers", tuple((str(n), s) for n, s in items))
        names = [name for name, _ in self.layers]
        if not names:
            _fail("layers", self.layers, "a plan covers at least one Conv/Linear layer")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            _fail("layers", dup, "each layer appears once")
        if not all(isinstance(s, LayerSetting) for _, s in self.layers):
            _fail("layers", self.layers, "each setting must be a LayerSetting")
        if self.kind not in PLAN_KINDS:
            _fail("kind", self.kind, f"it must be one of {list(PLAN_KINDS)}")
        if self.budget is not None and not 0 < self.budget <= 1:
            _fail("budget", self.budget, "it must be in (0, 1] (a fraction of the dense cost)")
        if self.budget_metric not in BUDGET_METRICS:
            _fail("budget_metric", self.budget_metric, f"it must be one of {list(BUDGET_METRICS)}")

    @classmethod
    def uniform(
        cls, names: Sequence[str], bits: int, *, keep: float | Sequence[float] = 1.0
    ) -> CompressionPlan:
        """Today's trial as a plan: every layer at ``bits``, keeping ``keep`` of its width (one
        share for all, or one per layer as structured pruning left them)."""
        fmt = format_of_bits(bits)
        keeps = [keep] * len(names) if isinstance(keep, int | float) else list(keep)
        if len(keeps) != len(names):
            _fail("keep", keeps, f"it needs one share per layer ({len(names)})")
        return cls(
            tuple((name, LayerSetting(fmt, float(k))) for name, k in zip(names, keeps, strict=True))
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.layers)

    def setting(self, name: str) -> LayerSetting:
        for layer, setting in self.layers:
            if layer == name:
                return setting
        raise KeyError(f"the plan has no layer {name!r}; its layers: {list(self.names)[:12]}")

    def formats(self) -> tuple[str, ...]:
        return tuple(s.format for _, s in self.layers)

    @property
    def uniform_bits(self) -> int | None:
        """The one bit-width of a uniform plan's layers; None for a mixed plan, also one that
        gives every layer the same format (it is exported and checked as a mixed plan: its
        embedding tables stay float)."""
        if self.kind != "uniform":
            return None
        widths = {s.bits for _, s in self.layers}
        return widths.pop() if len(widths) == 1 else None

    def layers_in(self, fmt: str) -> tuple[str, ...]:
        return tuple(name for name, s in self.layers if s.format == fmt)

    def histogram(self) -> str:
        """``fp32:1,int8:2,int4:1``: how many layers each format holds (the ``plan_formats``
        tag), in the order of ``FORMAT_BITS``."""
        counts = Counter(self.formats())
        return ",".join(f"{f}:{counts[f]}" for f in FORMAT_BITS if counts[f])

    def keep_histogram(self) -> str:
        """``1:3,0.5:2``: how many layers keep each share of their output units (two decimals;
        the ``plan_keeps`` tag), widest first."""
        counts = Counter(f"{s.keep:.2f}".rstrip("0").rstrip(".") for _, s in self.layers)
        return ",".join(f"{k}:{counts[k]}" for k in sorted(counts, key=float, reverse=True))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PLAN_VERSION,
            "kind": self.kind,
            "budget": self.budget,
            "predicted_bytes": self.predicted_bytes,
            "predicted_loss": self.predicted_loss,
            "target_bytes": self.target_bytes,
            **(
                {
                    "budget_metric": self.budget_metric,
                    "predicted_ms": self.predicted_ms,
                    "target_ms": self.target_ms,
                    "latency_table": self.latency_table,
                }
                if self.budget_metric != "size" or self.latency_table is not None
                else {}
            ),
            "layers": [{"name": n, "format": s.format, "keep": s.keep} for n, s in self.layers],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompressionPlan:
        if not isinstance(data, Mapping) or data.get("version") != PLAN_VERSION:
            _fail("version", getattr(data, "get", lambda _k: data)("version"), "must be 1")
        try:
            layers = tuple(
                (str(item["name"]), LayerSetting(str(item["format"]), float(item["keep"])))
                for item in data["layers"]
            )
        except (KeyError, TypeError) as exc:
            _fail("layers", data.get("layers"), f"each needs name, format and keep ({exc})")
        predicted = data.get("predicted_bytes")
        loss = data.get("predicted_loss")
        target = data.get("target_bytes")
        return cls(
            layers,
            kind=str(data.get("kind", "uniform")),
            budget=data.get("budget"),
            predicted_bytes=None if predicted is None else int(predicted),
            predicted_loss=None if loss is None else float(loss),
            target_bytes=None if target is None else int(target),
            budget_metric=str(data.get("budget_metric", "size")),
            predicted_ms=_float_or_none(data.get("predicted_ms")),
            target_ms=_float_or_none(data.get("target_ms")),
            latency_table=data.get("latency_table"),
        )


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _fail(name: str, value: object, rule: str) -> Any:
    raise ConfigError(
        field=f"plan.{name}",
        value=value,
        rule=rule,
        fix="build plans with CompressionPlan.uniform or the allocator (trials._plan_allocate)",
        source="CompressionPlan",
    )
