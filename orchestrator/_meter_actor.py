"""The measuring side of a search's latency meter: the Ray actor that times every artifact of a
search on one machine (``LatencyMeterActor``), and the timing functions that it and an inline
meter share, each holding the machine's gate exclusive while it times (``orchestrator._gate``).
The trials' side, and how a search starts its meter, are in ``orchestrator._latency``."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator._gate import MeasureGate
from orchestrator._isolation import (
    IsolationChoice,
    NodeCores,
    choose_isolation,
    meter_cores,
    pin_threads,
    usable_cores,
)
from searchspace import Latency
from trials import (
    Int8Figures,
    Int8Timing,
    LatencyPlan,
    LatencyReading,
    LatencySession,
    cpu_identity,
    measure_int8_candidates,
)


def node_tags() -> dict[str, str]:
    """Where this process runs: ``latency_node`` (the Ray node id, or the host name outside
    Ray), ``latency_node_ip`` and ``latency_host``."""
    host = socket.gethostname()
    tags = {"latency_node": host, "latency_node_ip": "", "latency_host": host}
    try:
        import ray

        if ray.is_initialized():
            tags["latency_node"] = ray.get_runtime_context().get_node_id()
            tags["latency_node_ip"] = ray.util.get_node_ip_address()
    except ImportError:  # pragma: no cover - ray is a dependency of the orchestrator
        pass
    return tags


def timed(
    model: Path | bytes,
    example: np.ndarray,
    plan: LatencyPlan,
    *,
    gate: MeasureGate | None,
    tags: dict[str, str],
) -> LatencyReading:
    """Time ``model`` as ``plan`` says, holding ``gate`` exclusive while it runs (the session
    is built before, so the machine is held only for the warm-up and the timed runs)."""
    session = LatencySession(model, threads=plan.threads)
    if gate is None:
        return LatencyReading(session.time(example, plan), {**tags, "latency_gate": "off"})
    with gate.exclusive() as claim:
        stats = session.time(example, plan)
    return LatencyReading(
        stats,
        {**tags, "latency_gate": "exclusive" if claim.quiet else "timeout"},
        {"latency_gate_wait_ms": claim.wait_s * 1e3},
    )


@dataclass(frozen=True)
class MeterCpu:
    """The machine a meter times on: its node (``latency_node`` of ``node_tags``) and its CPU
    as int8 timings depend on it (``trials.cpu_identity``)."""

    node: str
    identity: dict[str, Any]


@dataclass(frozen=True)
class CandidateTiming:
    """The meter's figures of the int8 candidates (median batch-1 ms and kernel deviation per
    format), the machine they ran on, and the gate (``exclusive``, ``timeout`` or ``off``) and
    its wait."""

    figures: Int8Figures
    cpu: MeterCpu
    gate: str
    gate_wait_ms: float = 0.0


def meter_cpu(tags: dict[str, str]) -> MeterCpu:
    return MeterCpu(node=tags["latency_node"], identity=cpu_identity())


def timed_candidates(
    models: dict[str, bytes],
    feed: np.ndarray,
    timing: Int8Timing,
    *,
    gate: MeasureGate | None,
    tags: dict[str, str],
) -> CandidateTiming:
    """Time every candidate in interleaved rounds on ``feed``'s first row and check its
    kernels on every row, holding ``gate`` exclusive once for the whole comparison (the
    formats are compared under the same conditions)."""
    if gate is None:
        figures = measure_int8_candidates(models, feed, timing)
        return CandidateTiming(figures, meter_cpu(tags), "off")
    with gate.exclusive() as claim:
        figures = measure_int8_candidates(models, feed, timing)
    return CandidateTiming(
        figures,
        meter_cpu(tags),
        "exclusive" if claim.quiet else "timeout",
        claim.wait_s * 1e3,
    )


class LatencyMeterActor:
    """The search's latency meter, run as a Ray actor with ``max_concurrency=1``: measures one
    artifact at a time, on the node its resources pin it to.

    ``node``: what the driver decided for this node when it started Ray on it (a search on one
    machine); else (a cluster) the meter resolves its isolation where it lands. Under
    ``cores`` the thread that times holds the meter's cores alone: the actor's other threads
    (Ray's) are pinned off them, like the trials'."""

    def __init__(self, latency: Latency, trial_cpus: float, node: NodeCores | None = None) -> None:
        self._choice = (
            node.choice
            if node is not None
            else choose_isolation(latency, node_cores=len(usable_cores()), trial_cpus=trial_cpus)
        )
        self._cores: tuple[int, ...] = ()
        self._rest: tuple[int, ...] = ()
        if self._choice.mode == "cores":
            self._cores = (node.cores if node else ()) or meter_cores(latency.meter_cores)
            self._rest = tuple(c for c in usable_cores() if c not in self._cores)
            self._hold_cores()
        self._gate = MeasureGate() if self._choice.mode == "pause" else None
        self._tags = {
            "latency_where": "actor",
            "latency_isolation": self._choice.mode,
            **node_tags(),
        }

    def node(self) -> dict[str, str]:
        """Where the meter runs (its tags)."""
        return dict(self._tags)

    def placement(self) -> MeterPlacement:
        """Where the meter runs, the isolation it chose there and the cores it pinned."""
        return MeterPlacement(self._tags["latency_node"], self._choice, self._cores)

    def measure(self, model: bytes, example: np.ndarray, plan: LatencyPlan) -> LatencyReading:
        self._hold_cores()
        return timed(model, example, plan, gate=self._gate, tags=self._tags)

    def cpu(self) -> MeterCpu:
        """The machine this meter times on."""
        return meter_cpu(self._tags)

    def time_candidates(
        self, models: dict[str, bytes], feed: np.ndarray, timing: Int8Timing
    ) -> CandidateTiming:
        """Time and check the int8 candidates of ``int8_format: auto`` against each other (see
        ``timed_candidates``)."""
        self._hold_cores()
        return timed_candidates(models, feed, timing, gate=self._gate, tags=self._tags)

    def _hold_cores(self) -> None:
        """Under ``cores``: this thread, the one that times (and the ONNX Runtime threads that
        its sessions start, which inherit its mask), alone on the meter's cores; every other
        thread of this process (Ray's) on the rest. Done before each timing: Ray starts
        threads of its own after the actor's start (its garbage-collection thread, seen on
        the meter's core), and they would inherit the mask of the thread that made them."""
        if not self._cores:
            return
        if self._rest:
            pin_threads(self._rest)
        os.sched_setaffinity(0, self._cores)


@dataclass(frozen=True)
class MeterPlacement:
    """Where a meter actor runs (its Ray node id), the isolation it measures under there, and
    the cores it pinned itself to (``cores`` mode; else ())."""

    node: str
    choice: IsolationChoice
    cores: tuple[int, ...] = ()
