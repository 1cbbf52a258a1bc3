"""Check a spec's per-trial resources against what the Ray cluster really has."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from searchspace import ConfigError, SearchSpec


def check_resources(spec: SearchSpec, nodes: Iterable[Mapping[str, Any]]) -> None:
    """Fail (ConfigError, exit 2) when no live node can ever run one trial: such a search would
    wait forever. ``nodes`` is ``ray.nodes()``."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", False)]
    most_cpu = max((float(r.get("CPU", 0)) for r in alive), default=0.0)
    most_gpu = max((float(r.get("GPU", 0)) for r in alive), default=0.0)
    want = spec.resources
    if want.gpu > 0 and most_gpu == 0:
        raise ConfigError(
            field="resources.gpu",
            value=want.gpu,
            rule="the Ray cluster has no GPU, so no trial asking for one could ever start",
            fix="set `resources: {gpu: 0}` to train on CPUs, or pass --address of a cluster "
            "with GPUs",
        )
    if want.gpu > most_gpu:
        raise ConfigError(
            field="resources.gpu",
            value=want.gpu,
            rule=f"every trial must fit on one node, and the largest has {most_gpu:g} GPUs",
            fix=f"ask for at most {most_gpu:g} GPUs per trial (fractions such as 0.25 pack "
            "trials onto one GPU)",
        )
    if want.cpu > most_cpu:
        raise ConfigError(
            field="resources.cpu",
            value=want.cpu,
            rule=f"every trial must fit on one node, and the largest has {most_cpu:g} CPUs",
            fix=f"ask for at most {most_cpu:g} CPUs per trial",
        )
