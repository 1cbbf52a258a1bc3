"""How the trials on the latency meter's machine are kept from disturbing its measurements.

``latency.isolation`` names the mode; ``auto`` is resolved on the meter's node, from its cores,
when the meter starts (:func:`choose_isolation`):

- ``pause``: the measurement gate (``orchestrator._latency.MeasureGate``): while the meter
  measures, the trials on its machine wait at their next training step. Honest on any machine,
  but training stops for every measurement (on a GPU node packed with 8 trials it cost 1.75x
  throughput, BENCHMARKS.md).
- ``cores``: the meter's timing thread holds ``latency.meter_cores`` cores of its node (the
  last ones it may use) and nothing else of the search runs there: every trial worker on that
  node pins itself to the other cores (:func:`pin_trial`), so do the meter's own Ray threads,
  and on the machine where the search starts Ray the driver keeps off them before it starts
  Ray (:func:`keep_off_meter_cores`), so Ray's daemons and every worker inherit that. Nobody
  pauses. What remains shared is the L3 cache and the memory bandwidth
  (``benchmarks/latency_isolation.py`` and ``benchmarks/meter_pinning.py`` measure it).
- ``none``: nothing: the trials train beside the measurement.

The rule of ``auto``: ``cores`` when the node has at least ``meter_cores + trial_cpus + 1``
cores (the meter's, one trial's, and one spare for Ray and the OS), the meter is an actor and
``latency.cpus`` is a whole number; else ``pause``. A 2-core laptop gets ``pause`` (1 + 1 + 1 >
2); a 16-core GPU node with 2-CPU trials gets ``cores``.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from searchspace import Latency

Mode = Literal["pause", "cores", "none"]
SPARE_CORES = 1


@dataclass(frozen=True)
class IsolationChoice:
    """The mode a meter measures under, on its node, and why (``rule``: the ``auto`` rule as it
    applied, or that the config named the mode)."""

    mode: Mode
    rule: str

    def __post_init__(self) -> None:
        if self.mode not in ("pause", "cores", "none"):
            raise ValueError(f"mode must be 'pause', 'cores' or 'none', got {self.mode!r}")


def choose_isolation(latency: Latency, *, node_cores: int, trial_cpus: float) -> IsolationChoice:
    """The mode ``latency.isolation`` means on a node with ``node_cores`` usable cores, for
    trials that each reserve ``trial_cpus`` CPUs (see the module's docstring for ``auto``)."""
    if latency.isolation != "auto":
        return IsolationChoice(latency.isolation, f"isolation: {latency.isolation} (the config)")
    need = latency.meter_cores + max(1, math.ceil(trial_cpus)) + SPARE_CORES
    if latency.where == "inline":
        return IsolationChoice("pause", "auto: the meter runs inside each trial -> pause")
    if latency.cpus != int(latency.cpus):
        return IsolationChoice(
            "pause", f"auto: latency.cpus={latency.cpus:g} is no whole core count -> pause"
        )
    cmp = ">=" if node_cores >= need else "<"
    mode: Mode = "cores" if node_cores >= need else "pause"
    return IsolationChoice(
        mode,
        f"auto: {node_cores} cores {cmp} {latency.meter_cores} meter + "
        f"{max(1, math.ceil(trial_cpus))} trial + {SPARE_CORES} spare -> {mode}",
    )


@dataclass(frozen=True)
class NodeCores:
    """The isolation of the node where the search's driver starts Ray, as the driver resolved
    it before starting Ray, and under ``cores`` the meter's cores there, which the driver, and
    so everything Ray starts on that node, keeps off (:func:`keep_off_meter_cores`)."""

    choice: IsolationChoice
    cores: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.cores and self.choice.mode != "cores":
            raise ValueError(f"only isolation 'cores' holds cores, not {self.choice.mode!r}")


@contextlib.contextmanager
def keep_off_meter_cores(latency: Latency, *, trial_cpus: float) -> Iterator[NodeCores]:
    """For the block, on the machine where this process starts Ray: resolve
    ``latency.isolation`` here and, under ``cores``, pin every thread of this process off the
    meter's cores, so that the processes it starts (Ray's daemons and workers, which inherit
    the mask of the thread that starts them) keep off them too. Each thread's mask is given
    back when the block ends. Where the meter's cores cannot be had (too few cores), nothing
    is pinned and the meter reports why when it starts."""
    choice = choose_isolation(latency, node_cores=len(usable_cores()), trial_cpus=trial_cpus)
    if choice.mode != "cores" or latency.where != "actor":
        yield NodeCores(choice)
        return
    before = usable_cores()
    try:
        cores = meter_cores(latency.meter_cores, before)
    except ValueError:
        yield NodeCores(choice)
        return
    masks = {tid: _mask(tid) for tid in _threads()}
    pin_threads(tuple(c for c in before if c not in cores))
    try:
        yield NodeCores(choice, cores)
    finally:
        for tid in _threads():  # threads started in the block get this thread's old mask
            with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
                os.sched_setaffinity(tid, masks.get(tid) or set(before))


def usable_cores() -> list[int]:
    """The cores this process may run on, in order."""
    return sorted(os.sched_getaffinity(0))


def meter_cores(count: int, available: list[int] | None = None) -> tuple[int, ...]:
    """The cores a meter takes: the last ``count`` of ``available`` (this process's)."""
    cores = available if available is not None else usable_cores()
    if not 0 < count < len(cores):
        raise ValueError(
            f"the latency meter needs 0 < cores < the node's {len(cores)} usable cores, got "
            f"{count}; lower latency.cpus / latency.threads, or use isolation: pause"
        )
    return tuple(cores[-count:])


def pin_threads(cores: set[int] | frozenset[int] | tuple[int, ...]) -> None:
    """Pin every thread of this process to ``cores`` (``sched_setaffinity`` on a pid applies
    to that one thread; threads started later inherit it from the one that starts them)."""
    wanted = set(cores)
    for tid in _threads():
        try:
            os.sched_setaffinity(tid, wanted)
        except (ProcessLookupError, PermissionError):  # a thread that just ended
            continue


def pin_trial(reserved: tuple[int, ...]) -> tuple[int, ...]:
    """Pin this trial worker's threads to its usable cores minus ``reserved`` (the meter's)
    and return them; idempotent (a reused worker pins again at each trial). Nothing is
    pinned, and () returned, when no core would be left."""
    free = tuple(c for c in usable_cores() if c not in reserved)
    if not free:
        return ()
    pin_threads(free)
    return free


def cores_text(cores: set[int] | tuple[int, ...]) -> str:
    """``{0, 1, 2, 5}`` as ``0-2,5`` (the form of ``taskset -c``)."""
    spans: list[list[int]] = []
    for core in sorted(cores):
        if spans and core == spans[-1][1] + 1:
            spans[-1][1] = core
        else:
            spans.append([core, core])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)


def _mask(tid: int) -> set[int] | None:
    try:
        return os.sched_getaffinity(tid)
    except OSError:  # a thread that just ended
        return None


def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: this thread only
        return [0]
