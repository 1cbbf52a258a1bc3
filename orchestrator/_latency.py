"""Where a search measures latency, and how it keeps concurrent trials from disturbing it.

Two mechanisms, both chosen by the config's ``latency:`` section:

- **One meter per search** (``where: actor``, the default): a Ray actor that takes one
  measurement at a time (``max_concurrency=1``) and times every artifact of the search, the
  dense baseline's included, on one machine. Its ``cpus`` and custom ``resources`` pin it to
  the intended hardware on a mixed cluster (e.g. ``resources: {deploy_cpu: 1}``). Trials send it
  the artifact's bytes and the example input. ``where: inline`` measures in each trial's own
  process instead.
- **A measurement gate** (``isolation: pause``, the default on small machines, in
  ``orchestrator._gate``): a reader/writer lock between
  the processes of one machine, on two lock files in a node-local directory. Trials hold it
  shared while they work and offer it at each training step (``pause_point``); a measurement
  takes it exclusive, so the trials on that machine pause at their next step until it is done
  (a few tenths of a second). A turnstile keeps new readers out while a measurement waits, so
  it is never starved. Without it a trial training beside a measurement shares the cores and
  the caches with it.
- **Cores of its own** (``isolation: cores``, ``auto``'s choice on nodes with enough cores;
  ``orchestrator._isolation``): the meter pins itself to cores of its node and the trials
  there pin themselves to the others, so nobody pauses.

The meter also resolves ``quantization.int8_format: auto`` for its search, once, before the
trials start (``time_candidates``; see ``orchestrator._int8``): the int8 format is chosen on the
machine, and under the gate, where every artifact's latency is measured.

``benchmarks/latency_isolation.py`` measures how well each keeps a median undisturbed.
"""

from __future__ import annotations

import abc
import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from orchestrator._gate import GATE_DIR_ENV, GATE_TIMEOUT_S, GateClaim, MeasureGate
from orchestrator._isolation import (
    Mode,
    NodeCores,
    choose_isolation,
    pin_trial,
    usable_cores,
)
from orchestrator._meter_actor import (
    CandidateTiming,
    LatencyMeterActor,
    MeterCpu,
    MeterPlacement,
    meter_cpu,
    node_tags,
    timed,
    timed_candidates,
)
from searchspace import Latency, SlimtuneError
from trials import (
    Int8Timing,
    LatencyPlan,
    LatencyReading,
)

__all__ = [
    "GATE_DIR_ENV",
    "GATE_TIMEOUT_S",
    "GateClaim",
    "LatencyMeterError",
    "LatencyMeterUnavailable",
    "MeasureGate",
    "MeterRef",
    "Pinning",
    "SearchMeter",
    "running_meter",
]

NAMESPACE = "slimtune"
# How long a search waits for its latency actor to start on a node that can hold it.
PLACEMENT_TIMEOUT_S = 300.0


class LatencyMeterError(SlimtuneError):
    """The latency meter of a search could not be started or reached."""


class LatencyMeterUnavailable(LatencyMeterError):
    """The search's meter actor stayed unreachable (lost with its node and not back yet): an
    infrastructure failure, so the trial is retried by Ray rather than recorded as failed."""


# A meter lost with its node restarts elsewhere (max_restarts=-1); a trial keeps asking it for
# this long before it gives up and lets Ray retry the whole trial.
METER_RETRY_S = 120.0


class SearchMeter(abc.ABC):
    """A trial's side of the search's latency measurement (``trials.LatencyMeter``): it holds
    the machine's gate shared while the trial works (``working()``), offers it at each
    training step, and steps aside while it waits for its own measurement."""

    def __init__(self, gate: MeasureGate | None) -> None:
        self._gate = gate

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        if self._gate is None:
            yield
            return
        try:
            with self._gate.working():
                yield
        finally:
            self._gate.close()

    def pause_point(self) -> None:
        if self._gate is not None:
            self._gate.pause_point()

    def measure(self, onnx_path: Path, example: np.ndarray, plan: LatencyPlan) -> LatencyReading:
        with self._aside():
            return self._measure(onnx_path, example, plan)

    def cpu(self) -> MeterCpu:
        """The machine the search's latency is measured on."""
        return self._cpu()

    def time_candidates(
        self, models: dict[str, bytes], feed: np.ndarray, timing: Int8Timing
    ) -> CandidateTiming:
        """Have the meter time and check the int8 candidates of ``int8_format: auto`` (``feed``:
        the example row first, then calibration rows), on its machine and under its gate (see
        ``timed_candidates``)."""
        with self._aside():
            return self._time_candidates(models, np.ascontiguousarray(feed), timing)

    def _aside(self) -> contextlib.AbstractContextManager[None]:
        return self._gate.stepped_aside() if self._gate else contextlib.nullcontext()

    @abc.abstractmethod
    def _measure(self, onnx_path: Path, example: np.ndarray, plan: LatencyPlan) -> LatencyReading:
        """Take the measurement (the gate is not held by this process)."""

    @abc.abstractmethod
    def _cpu(self) -> MeterCpu:
        """The meter's machine."""

    @abc.abstractmethod
    def _time_candidates(
        self, models: dict[str, bytes], feed: np.ndarray, timing: Int8Timing
    ) -> CandidateTiming:
        """Time the candidates (the gate is not held by this process)."""


class InlineSearchMeter(SearchMeter):
    """``where: inline``: times the artifact in the trial's own process, holding the machine's
    gate exclusive (when ``pause_trials``)."""

    def _measure(self, onnx_path: Path, example: np.ndarray, plan: LatencyPlan) -> LatencyReading:
        return timed(onnx_path, example, plan, gate=self._gate, tags=self._tags())

    def _cpu(self) -> MeterCpu:
        return meter_cpu(self._tags())

    def _time_candidates(
        self, models: dict[str, bytes], feed: np.ndarray, timing: Int8Timing
    ) -> CandidateTiming:
        return timed_candidates(models, feed, timing, gate=self._gate, tags=self._tags())

    def _tags(self) -> dict[str, str]:
        mode = "pause" if self._gate is not None else "none"
        return {"latency_where": "inline", "latency_isolation": mode, **node_tags()}


class ActorSearchMeter(SearchMeter):
    """``where: actor``: sends the artifact's bytes to the search's meter actor and waits."""

    def __init__(self, actor_name: str, namespace: str, gate: MeasureGate | None) -> None:
        super().__init__(gate)
        self._name = actor_name
        self._namespace = namespace

    def _measure(self, onnx_path: Path, example: np.ndarray, plan: LatencyPlan) -> LatencyReading:
        payload = onnx_path.read_bytes()
        feed = np.ascontiguousarray(example)
        return cast(LatencyReading, self._call("measure", payload, feed, plan))

    def _cpu(self) -> MeterCpu:
        return cast(MeterCpu, self._call("cpu"))

    def _time_candidates(
        self, models: dict[str, bytes], feed: np.ndarray, timing: Int8Timing
    ) -> CandidateTiming:
        return cast(CandidateTiming, self._call("time_candidates", models, feed, timing))

    def _call(self, method: str, *args: Any) -> Any:
        """``method`` of the meter actor, asked again while the actor restarts."""
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError

        deadline = time.monotonic() + METER_RETRY_S
        delay = 0.5
        while True:
            try:
                actor: Any = ray.get_actor(self._name, namespace=self._namespace)
                return ray.get(getattr(actor, method).remote(*args))
            except (ActorUnavailableError, ActorDiedError, ValueError) as exc:
                # ValueError: the name is not registered (yet) while the actor restarts.
                if time.monotonic() + delay > deadline:
                    raise LatencyMeterUnavailable(
                        f"the search's latency meter (Ray actor {self._name!r} in namespace "
                        f"{self._namespace!r}) stayed unreachable for {METER_RETRY_S:g} s: "
                        f"{type(exc).__name__}: {exc}. Ray retries the trial (faults."
                        "max_retries); if it keeps failing, check the nodes that hold "
                        "latency.resources, or run the search again with --resume."
                    ) from exc
                time.sleep(delay)
                delay = min(2 * delay, 5.0)


@dataclass(frozen=True)
class Pinning:
    """``isolation: cores``: the meter's node (Ray node id) and the cores it holds there; a
    trial worker on that node keeps off them (``orchestrator._isolation.pin_trial``)."""

    node: str
    cores: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.cores:
            raise ValueError("a pinned meter holds at least one core, got none")


@dataclass(frozen=True)
class MeterRef:
    """How a trial reaches its search's latency meter; plain data, pickled to the workers.

    ``pause_trials``: the trials hold the node's gate (``isolation: pause``); ``pinning``: the
    meter holds cores of its node (``isolation: cores``); neither: ``none``. ``rule``: why
    that mode (``orchestrator._isolation.choose_isolation``)."""

    where: Literal["actor", "inline"]
    pause_trials: bool
    actor_name: str | None = None
    namespace: str = NAMESPACE
    pinning: Pinning | None = None
    rule: str = ""

    @property
    def isolation(self) -> Mode:
        """The mode the search's latency is measured under."""
        if self.pinning is not None:
            return "cores"
        return "pause" if self.pause_trials else "none"

    def pin_trial(self) -> tuple[int, ...]:
        """In a trial worker: under ``isolation: cores``, on the meter's node, pin this
        process's threads to the cores the meter does not hold and return them; elsewhere,
        and in other modes, pin nothing and return ()."""
        if self.pinning is None:
            return ()
        if node_tags()["latency_node"] != self.pinning.node:
            return ()
        return pin_trial(self.pinning.cores)

    def connect(self, gate_dir: Path | None = None) -> SearchMeter:
        """This process's meter (one per trial: it owns the process's gate files)."""
        gate = MeasureGate(gate_dir) if self.pause_trials else None
        if self.where == "actor":
            if self.actor_name is None:
                raise LatencyMeterError("an actor meter needs the actor's name")
            return ActorSearchMeter(self.actor_name, self.namespace, gate)
        return InlineSearchMeter(gate)


@contextlib.contextmanager
def running_meter(
    latency: Latency,
    *,
    trial_cpus: float = 1.0,
    timeout_s: float = PLACEMENT_TIMEOUT_S,
    node: NodeCores | None = None,
) -> Iterator[MeterRef]:
    """Start the search's latency meter as ``latency`` says, wait until it runs, and yield how
    trials reach it; the meter is stopped when the block ends. Needs ``ray.init()`` first (for
    ``where: actor``). The driver holds the actor's handle for the whole block: Ray stops an
    actor once no handle to it is left. ``trial_cpus``: the CPUs one trial reserves (the rule
    of ``isolation: auto`` counts them; the meter resolves it on its own node, or takes
    ``node``: what the driver decided when it started Ray on this machine,
    ``orchestrator._isolation.keep_off_meter_cores``)."""
    if latency.where == "inline":
        choice = choose_isolation(latency, node_cores=len(usable_cores()), trial_cpus=trial_cpus)
        yield MeterRef(where="inline", pause_trials=choice.mode == "pause", rule=choice.rule)
        return
    import ray

    name = f"slimtune-latency-{uuid.uuid4().hex[:12]}"
    options: dict[str, Any] = {
        "name": name,
        "namespace": NAMESPACE,
        "num_cpus": latency.cpus,
        "max_concurrency": 1,
        "max_restarts": -1,  # a meter lost with its node starts again on another that fits
        "max_task_retries": 3,
    }
    if latency.resources:
        options["resources"] = dict(latency.resources)
    actor: Any = ray.remote(LatencyMeterActor).options(**options).remote(latency, trial_cpus, node)
    try:
        placed = actor.placement.remote()
        ready, _ = ray.wait([placed], timeout=timeout_s)
        if not ready:
            raise LatencyMeterError(
                f"the latency meter (cpus={latency.cpus:g}, resources={dict(latency.resources)}) "
                f"did not start within {timeout_s:g} s: the nodes that can hold it are busy. "
                "Fix: free them, or lower latency.cpus / latency.resources."
            )
        try:
            where: MeterPlacement = ray.get(placed)
        except Exception as exc:  # its __init__ failed: e.g. no core left for the trials
            raise LatencyMeterError(
                f"the latency meter (isolation={latency.isolation}, cpus={latency.cpus:g}) "
                f"could not start: {exc}"
            ) from exc
        yield MeterRef(
            where="actor",
            pause_trials=where.choice.mode == "pause",
            actor_name=name,
            pinning=Pinning(where.node, where.cores) if where.cores else None,
            rule=where.choice.rule,
        )
    finally:
        with contextlib.suppress(Exception):  # already gone with its node or the cluster
            ray.kill(actor)
