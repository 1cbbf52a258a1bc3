"""CPU accounting of a process tree (a search's driver, Ray's processes, the trial workers),
from /proc: for benchmarks/orchestration_overhead.py."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_and_name(pid: int) -> tuple[float, str] | None:
    """CPU seconds and command name of a live process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
        cmd = (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK, cmd


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    except OSError:
        pass
    return out


def _kind(cmd: str, pid: int, root: int) -> str:
    if pid == root:
        return "driver"
    title = cmd.split(" ")[0]
    if "default_worker.py" in cmd or (title.startswith("ray::") and not title.endswith("Agent")):
        return "trial workers"  # ray::IDLE, ray::ImplicitFunc.train, a worker starting up
    return "ray services"  # gcs_server, raylet, log monitor, agents


class TreeCpu:
    """Samples the CPU seconds of ``root`` and its descendants, by kind of process, every
    ``every`` seconds. A process that ends keeps its last sample (Ray's processes end at
    ``ray.shutdown``); :meth:`between` gives what each kind used in a window of time."""

    def __init__(self, root: int, *, every: float = 1.0) -> None:
        self.root = root
        self.every = every
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._last: dict[int, tuple[str, float]] = {}
        self._own_cpu = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> TreeCpu:
        self._record()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._record()

    def _tree(self) -> dict[int, tuple[str, float]]:
        tree, frontier = {self.root}, [self.root]
        while frontier:
            for child in _children(frontier.pop()):
                if child not in tree:
                    tree.add(child)
                    frontier.append(child)
        out = {}
        for pid in tree:
            if (stat := _cpu_and_name(pid)) is not None:
                kind = _kind(stat[1], pid, self.root)
                # A worker's title changes as it starts and exits: once a worker, always one.
                if self._last.get(pid, ("",))[0] == "trial workers":
                    kind = "trial workers"
                out[pid] = (kind, stat[0])
        return out

    def _record(self) -> None:
        self._last.update(self._tree())
        totals: dict[str, float] = {}
        for kind, cpu in self._last.values():
            totals[kind] = totals.get(kind, 0.0) + cpu
        # This sampler runs in the driver: its own CPU time is not the search's.
        totals["driver"] = totals.get("driver", 0.0) - self._own_cpu
        self.samples.append((time.time(), totals))

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._record()
            self._own_cpu = time.thread_time()

    def between(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds by kind from the last sample at or before ``start`` to the first one at
        or after ``end`` (so the window covers at least [start, end])."""
        before = [tot for t, tot in self.samples if t <= start] or [self.samples[0][1]]
        after = [tot for t, tot in self.samples if t >= end] or [self.samples[-1][1]]
        a, b = before[-1], after[0]
        return {k: b.get(k, 0.0) - a.get(k, 0.0) for k in sorted(set(a) | set(b))}
