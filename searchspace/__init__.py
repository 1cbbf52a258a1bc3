"""What is searched: knobs and their ranges, objectives with directions, the validated config."""

from searchspace._cover import cover_points
from searchspace._distributions import to_distributions
from searchspace._early_stopping import EARLY_STOPPING_NAMES, EarlyStopping
from searchspace._errors import ConfigError, SlimtuneError, shorten
from searchspace._latency import Latency
from searchspace._load import load_spec, parse_spec
from searchspace._params import TrialParams
from searchspace._pruning import PRUNING_SCOPES, Pruning, layer_sparsity_cap
from searchspace._secrets import CREDENTIALS_FIX, credentials_in, mask_secrets, redact_uri
from searchspace._space import (
    BUDGET_METRICS,
    KNOBS,
    NAME_KNOBS,
    PLAN_KINDS,
    PRUNING_SCHEMES,
    QUANT_SCHEMES,
    SIMULATED_BITS,
    SUPPORTED_BITS,
    Choice,
    FloatRange,
    Space,
)
from searchspace._spec import (
    INT8_FORMATS,
    METRICS,
    SAMPLERS,
    Faults,
    Objective,
    Quantization,
    Resources,
    SamplerSpec,
    SearchSpec,
    Tracking,
    Training,
)

__all__ = [
    "BUDGET_METRICS",
    "CREDENTIALS_FIX",
    "EARLY_STOPPING_NAMES",
    "INT8_FORMATS",
    "KNOBS",
    "METRICS",
    "NAME_KNOBS",
    "PLAN_KINDS",
    "PRUNING_SCHEMES",
    "PRUNING_SCOPES",
    "QUANT_SCHEMES",
    "SAMPLERS",
    "SIMULATED_BITS",
    "SUPPORTED_BITS",
    "Choice",
    "ConfigError",
    "EarlyStopping",
    "Faults",
    "FloatRange",
    "Latency",
    "Objective",
    "Pruning",
    "Quantization",
    "Resources",
    "SamplerSpec",
    "SearchSpec",
    "SlimtuneError",
    "Space",
    "Tracking",
    "Training",
    "TrialParams",
    "cover_points",
    "credentials_in",
    "layer_sparsity_cap",
    "load_spec",
    "mask_secrets",
    "parse_spec",
    "redact_uri",
    "shorten",
    "to_distributions",
]
