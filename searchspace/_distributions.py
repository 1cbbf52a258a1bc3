"""Turn a validated space into Optuna distributions (types only: no study, no sampler)."""

from __future__ import annotations

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
)

from searchspace._space import NAME_KNOBS, Choice, FloatRange, Space


def to_distributions(space: Space) -> dict[str, BaseDistribution]:
    """One Optuna distribution per knob. Fixed knobs become one-value categoricals.

    Integer knobs (batch size, bits) keep integer choices, so a proposal is always a valid value;
    name knobs (pruning) are categoricals of strings.
    """
    out: dict[str, BaseDistribution] = {}
    for name, knob in space.knobs().items():
        integer = name in ("batch_size", "bits")
        if name in NAME_KNOBS:
            names = knob.choices if isinstance(knob, Choice) else [knob]
            out[name] = CategoricalDistribution([str(v) for v in names])
        elif isinstance(knob, FloatRange):
            out[name] = FloatDistribution(knob.low, knob.high, log=knob.log)
        elif isinstance(knob, Choice):
            values = [
                int(v) if integer else float(v) for v in knob.choices if not isinstance(v, str)
            ]
            out[name] = CategoricalDistribution(values)
        else:
            out[name] = CategoricalDistribution([int(knob) if integer else float(knob)])
    return out
