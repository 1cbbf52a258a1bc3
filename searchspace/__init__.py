"""What is searched: knobs and their ranges, objectives with directions, the validated config."""

from searchspace._distributions import to_distributions
from searchspace._errors import ConfigError, SlimtuneError
from searchspace._load import load_spec, parse_spec
from searchspace._spec import (
    KNOBS,
    METRICS,
    NAME_KNOBS,
    PRUNING_SCHEMES,
    SAMPLERS,
    SUPPORTED_BITS,
    Choice,
    Faults,
    FloatRange,
    Latency,
    Objective,
    Resources,
    SamplerSpec,
    SearchSpec,
    Space,
    Tracking,
    Training,
    TrialParams,
)

__all__ = [
    "KNOBS",
    "METRICS",
    "NAME_KNOBS",
    "PRUNING_SCHEMES",
    "SAMPLERS",
    "SUPPORTED_BITS",
    "Choice",
    "ConfigError",
    "Faults",
    "FloatRange",
    "Latency",
    "Objective",
    "Resources",
    "SamplerSpec",
    "SearchSpec",
    "SlimtuneError",
    "Space",
    "Tracking",
    "Training",
    "TrialParams",
    "load_spec",
    "parse_spec",
    "to_distributions",
]
