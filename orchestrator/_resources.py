"""Check a spec's per-trial resources against what the Ray cluster really has."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from searchspace import ConfigError, Latency, SearchSpec

_BUILTIN = frozenset({"CPU", "GPU", "memory", "object_store_memory"})


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
    check_latency_resources(spec.latency, alive)


def check_latency_resources(latency: Latency, alive: list[Mapping[str, Any]]) -> None:
    """Fail (ConfigError) when no live node can hold the search's latency meter: its custom
    ``resources`` (the node type it is pinned to) and its ``cpus`` on one node. ``alive`` are
    the live nodes' ``Resources``."""
    if latency.where != "actor":
        return
    # Ray adds node:<ip> and accelerator_type:<name> itself; the rest are the custom ones.
    custom = sorted({k for r in alive for k in r if k not in _BUILTIN and ":" not in k})
    missing = {k: v for k, v in latency.resources.items() if not any(k in r for r in alive)}
    if missing:
        have = ", ".join(custom) if custom else "none"
        raise ConfigError(
            field="latency.resources",
            value=dict(latency.resources),
            rule=f"no live Ray node has the custom resource(s) {sorted(missing)}, so the latency "
            f"meter pinned to them could never start (custom resources in this cluster: {have})",
            fix="start the deployment node with them, e.g. `ray start --address HEAD "
            f"--resources '{{\"{next(iter(missing))}\": 1}}'`, or correct the name",
        )
    fits = [
        r
        for r in alive
        if all(float(r.get(k, 0)) >= v for k, v in latency.resources.items())
        and float(r.get("CPU", 0)) >= latency.cpus
    ]
    if not fits:
        nodes = [
            {k: float(r.get(k, 0)) for k in ("CPU", *latency.resources)}
            for r in alive
            if all(k in r for k in latency.resources)
        ]
        raise ConfigError(
            field="latency.cpus" if not latency.resources else "latency.resources",
            value={"cpus": latency.cpus, "resources": dict(latency.resources)},
            rule=f"the latency meter must fit on one node, and no live node has that much "
            f"(the nodes with its resources have {nodes})",
            fix="lower latency.cpus (0 reserves none) or the resource amounts",
        )
