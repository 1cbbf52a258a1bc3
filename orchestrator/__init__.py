"""Running a search: config, CLI, Ray Tune wiring, the Optuna searcher, MLflow records.

Names are imported on first use, so that ``slimtune select`` or ``slimtune schema`` do not pay
for importing torch and Ray.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator._ray_session import SearchOptions
    from orchestrator._samplers import build_sampler
    from orchestrator._search import SearchOutcome, run_search
    from orchestrator._searcher import OptunaAskTell
    from orchestrator._tracking import TrackingTarget, resolve_tracking_uri

_WHERE = {
    "OptunaAskTell": "orchestrator._searcher",
    "SearchOptions": "orchestrator._ray_session",
    "SearchOutcome": "orchestrator._search",
    "TrackingTarget": "orchestrator._tracking",
    "build_sampler": "orchestrator._samplers",
    "resolve_tracking_uri": "orchestrator._tracking",
    "run_search": "orchestrator._search",
}

__all__ = [
    "OptunaAskTell",
    "SearchOptions",
    "SearchOutcome",
    "TrackingTarget",
    "build_sampler",
    "resolve_tracking_uri",
    "run_search",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
