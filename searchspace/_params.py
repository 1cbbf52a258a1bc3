"""One point of the search space: the knob values a trial runs with."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from searchspace._pruning import PRUNING_SCOPES
from searchspace._space import (
    BUDGET_METRICS,
    PLAN_KINDS,
    PRUNING_SCHEMES,
    QUANT_SCHEMES,
    SIMULATED_BITS,
    SUPPORTED_BITS,
)


@dataclass(frozen=True)
class TrialParams:
    """One point of the space: the knob values a trial runs with."""

    lr: float
    batch_size: int
    sparsity: float
    bits: int
    pruning: str = "unstructured"
    distill_weight: float = 0.0
    distill_temperature: float = 2.0
    quant_scheme: str = "qat"
    pruning_scope: str = "global"
    plan: str = "uniform"
    budget: float = 0.5
    budget_metric: str = "size"

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"`lr > 0` must hold, but got lr={self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"`batch_size >= 1` must hold, but got batch_size={self.batch_size}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"`0 <= sparsity < 1` must hold, but got sparsity={self.sparsity}")
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(
                f"bits must be one of {list(SUPPORTED_BITS)}, but got bits={self.bits}"
            )
        if self.pruning not in PRUNING_SCHEMES:
            raise ValueError(
                f"pruning must be one of {list(PRUNING_SCHEMES)}, but got pruning={self.pruning!r}"
            )
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(
                f"`0 <= distill_weight <= 1` must hold, but got "
                f"distill_weight={self.distill_weight}"
            )
        if not (self.distill_temperature > 0 and math.isfinite(self.distill_temperature)):
            raise ValueError(
                f"`distill_temperature > 0` must hold, but got "
                f"distill_temperature={self.distill_temperature}"
            )
        if self.quant_scheme not in QUANT_SCHEMES:
            raise ValueError(
                f"quant_scheme must be one of {list(QUANT_SCHEMES)}, but got "
                f"quant_scheme={self.quant_scheme!r}"
            )
        if self.pruning_scope not in PRUNING_SCOPES:
            raise ValueError(
                f"pruning_scope must be one of {list(PRUNING_SCOPES)}, but got "
                f"pruning_scope={self.pruning_scope!r}"
            )
        if self.plan not in PLAN_KINDS:
            raise ValueError(f"plan must be one of {list(PLAN_KINDS)}, but got plan={self.plan!r}")
        if not 0.0 < self.budget <= 1.0:
            raise ValueError(f"`0 < budget <= 1` must hold, but got budget={self.budget}")
        if self.budget_metric not in BUDGET_METRICS:
            raise ValueError(
                f"budget_metric must be one of {list(BUDGET_METRICS)}, but got "
                f"budget_metric={self.budget_metric!r}"
            )
        if self.quant_scheme == "ptq" and self.bits in SIMULATED_BITS:
            raise ValueError(
                f"quant_scheme 'ptq' cannot produce bits={self.bits} (simulated widths "
                f"{list(SIMULATED_BITS)} exist only as fake-quant fine-tuning): use qat"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialParams:
        return cls(
            lr=float(d["lr"]),
            batch_size=int(d["batch_size"]),
            sparsity=float(d["sparsity"]),
            bits=int(d["bits"]),
            pruning=str(d.get("pruning", "unstructured")),
            distill_weight=float(d.get("distill_weight", 0.0)),
            distill_temperature=float(d.get("distill_temperature", 2.0)),
            quant_scheme=str(d.get("quant_scheme", "qat")),
            pruning_scope=str(d.get("pruning_scope", "global")),
            plan=str(d.get("plan", "uniform")),
            budget=float(d.get("budget", 0.5)),
            budget_metric=str(d.get("budget_metric", "size")),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
