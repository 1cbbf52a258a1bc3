"""Where does a pinned latency meter lose time? The meter's pinning, taken apart.

    python benchmarks/meter_pinning.py [--rounds 3] [--repeats 300] [--out FILE] [--smoke]

``latency.isolation: cores`` pins the meter to the last usable core and the trial workers to
the others. On the GPU machine the medians such a meter recorded during a search were up to
46 % above the same files timed afterwards on the quiet machine (benchmarks/BENCHMARKS.md,
issue 14). This script times the same ONNX files (two MLPs built here: one whose weights fit
a core's cache, one that streams 16 MB of weights from L3/memory; batch 1, one thread, as the
meter does) under each of these, in rotating order, and reports each median against a plain
unpinned process on the quiet machine:

- ``plain``: a fresh process on every core; ``plain@C``: the same, pinned to the meter's core C;
- ``actor-all@C``: a Ray actor with every one of its threads on C (what ``cores`` did:
  Ray's own threads share the core with the timing);
- ``actor-timer@C``: a Ray actor with only its timing thread on C, Ray's threads elsewhere;
- ``meter``: the search's own meter (``running_meter``, ``isolation: cores``), started as a
  search on one machine starts it (the driver, and so Ray, kept off C), as trials call it;

each quiet, and with ``load``: one busy process per other core (numpy matrix products, the
worst case of trials training), either on every core but C (``load-but-C``) or also off C's
SMT siblings (``load-but-core``: the whole physical core left to the meter).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import platform
import shlex
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/meter_pinning.py` from anywhere
    sys.path.insert(0, str(ROOT))
if TYPE_CHECKING:  # imported where used: the load processes import this module, not torch
    from trials import LatencyPlan

BLAS_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
MODELS = {"cache-resident": (512, 1024, 10), "streams-16MB": (1024, 2048, 2048, 10)}


def mlp_onnx(widths: Sequence[int], path: Path) -> Path:
    """An MLP (MatMul, Add, Relu) with random weights, saved to ``path``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        bias = np.zeros(b, np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        nodes += [
            helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
        ]
        prev = f"a{i}"
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
            prev = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, widths[0]])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, widths[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def time_file(path: str, width: int, plan: LatencyPlan) -> float:
    """Median batch-1 ms of ``path`` timed in this thread, as the meter times."""
    from trials import LatencySession

    example = np.random.default_rng(1).standard_normal((1, width)).astype(np.float32)
    return LatencySession(Path(path), threads=1).time(example, plan).median_ms


def _plain(cores: list[int], inbox: Any, outbox: Any) -> None:
    """A plain process on ``cores``: it times what it is sent."""
    os.sched_setaffinity(0, cores)
    while (job := inbox.get()) is not None:
        outbox.put(time_file(*job))


class PlainProcess:
    """A fresh process (not a Ray worker) kept for every timing of one setup."""

    def __init__(self, cores: list[int]) -> None:
        ctx = mp.get_context("spawn")
        self._inbox, self._outbox = ctx.Queue(), ctx.Queue()
        self._proc = ctx.Process(target=_plain, args=(cores, self._inbox, self._outbox))
        self._proc.start()

    def time(self, path: Path, width: int, plan: LatencyPlan) -> float:
        self._inbox.put((str(path), width, plan))
        return float(self._outbox.get(timeout=300))

    def close(self) -> None:
        self._inbox.put(None)
        self._proc.join(timeout=30)


class TimingActor:
    """A Ray actor that pins as the meter would, then times files."""

    def pin(self, core: int, others: list[int], timer_only: bool) -> list[int]:
        from orchestrator._isolation import pin_threads

        if timer_only:
            pin_threads(tuple(others))  # Ray's threads off the meter's core
            os.sched_setaffinity(0, {core})  # this (the timing) thread alone on it
        else:
            pin_threads({core})
        return sorted(os.sched_getaffinity(0))

    def time(self, path: str, width: int, plan: LatencyPlan) -> float:
        return time_file(path, width, plan)


def _burn(cores: list[int], stop: Any, parent: int) -> None:
    os.sched_setaffinity(0, cores)
    a = np.random.default_rng(0).standard_normal((384, 384))
    while not stop.is_set() and os.getppid() == parent:  # also ends if the script was killed
        a = np.tanh(a @ a)


@contextmanager
def load_on(cores: list[int]) -> Iterator[None]:
    """One busy single-threaded process pinned to each of ``cores``."""
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    # The children's BLAS must start one thread: a pool of one thread per core in each child
    # (numpy's default) would run on every core, the meter's too.
    blas = {v: os.environ.get(v) for v in BLAS_THREADS}
    os.environ.update(dict.fromkeys(BLAS_THREADS, "1"))
    try:
        procs = [
            ctx.Process(target=_burn, args=([c], stop, os.getpid()), daemon=True) for c in cores
        ]
        for p in procs:
            p.start()
    finally:
        for k, v in blas.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    time.sleep(1.0)  # all running
    try:
        yield
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()


def siblings(core: int) -> list[int]:
    """The SMT siblings of ``core`` (itself included), from sysfs; [core] if unknown."""
    f = Path(f"/sys/devices/system/cpu/cpu{core}/topology/thread_siblings_list")
    if not f.is_file():
        return [core]
    out: list[int] = []
    for part in f.read_text().strip().split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=300)
    p.add_argument("--out", type=Path)
    p.add_argument("--smoke", action="store_true", help="one round, few repeats: checks the script")
    a = p.parse_args(argv)
    # `timeout` sends SIGTERM: exit through the finally blocks, which stop the load processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from trials import LatencyPlan

    rounds, repeats = (1, 30) if a.smoke else (a.rounds, a.repeats)
    plan = LatencyPlan(warmup=50, repeats=repeats, threads=1)
    cores = sorted(os.sched_getaffinity(0))
    core = cores[-1]
    sib = siblings(core)
    others = [c for c in cores if c != core]
    off_core = [c for c in cores if c not in sib]
    lines = [
        "# The latency meter's pinning, taken apart (benchmarks/meter_pinning.py)",
        "",
        "command: python benchmarks/meter_pinning.py "
        + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:])),
        f"machine: python {platform.python_version()}, {len(cores)} usable cores; meter core "
        f"C={core}, its SMT siblings {sib}; {rounds} rounds x {repeats}+ timed runs per file",
    ]
    print("\n".join(lines), flush=True)
    import ray

    from orchestrator._isolation import keep_off_meter_cores
    from orchestrator._latency import running_meter
    from searchspace import Latency

    latency = Latency(isolation="cores")
    # As a search on one machine starts it: this process, and so Ray, keeps off the meter's
    # core, and the meter times on it alone (orchestrator._isolation.keep_off_meter_cores).
    with keep_off_meter_cores(latency, trial_cpus=1) as node:
        ray.init(num_cpus=len(cores), include_dashboard=False, log_to_driver=False)
        with running_meter(latency, trial_cpus=1, node=node) as ref:
            return _run(a.out, lines, rounds, plan, cores, others, off_core, ref.connect())


def _run(
    out: Path | None,
    lines: list[str],
    rounds: int,
    plan: LatencyPlan,
    cores: list[int],
    others: list[int],
    off_core: list[int],
    meter: Any,
) -> int:
    import ray

    core = cores[-1]
    work = Path(tempfile.mkdtemp(prefix="meter-pinning-"))
    files = {name: (mlp_onnx(w, work / f"{name}.onnx"), w[0]) for name, w in MODELS.items()}
    actor_cls: Any = ray.remote(num_cpus=0)(TimingActor)
    all_actor = actor_cls.remote()
    timer_actor = actor_cls.remote()
    lines.append(f"actor-all pinned: {ray.get(all_actor.pin.remote(core, others, False))}")
    pinned = ray.get(timer_actor.pin.remote(core, others, True))
    lines.append(f"actor-timer: timing thread on {pinned}")
    plain, plain_c = PlainProcess(cores), PlainProcess([core])
    setups: dict[str, Callable[[Path, int], float]] = {
        "plain": lambda f, w: plain.time(f, w, plan),
        "plain@C": lambda f, w: plain_c.time(f, w, plan),
        "actor-all@C": lambda f, w: ray.get(all_actor.time.remote(str(f), w, plan)),
        "actor-timer@C": lambda f, w: ray.get(timer_actor.time.remote(str(f), w, plan)),
        "meter": lambda f, w: meter_ms(meter, f, w, plan),
    }
    loads = {"quiet": None, "load-but-C": others}
    if off_core != others:
        loads["load-but-core"] = off_core
    results: dict[tuple[str, str, str], list[float]] = {}
    for r in range(rounds):
        for load, load_cores in loads.items():
            with load_on(load_cores) if load_cores else _nothing():
                order = list(setups)
                order = order[r % len(order) :] + order[: r % len(order)]
                for setup in order:
                    for name, (f, w) in files.items():
                        results.setdefault((load, setup, name), []).append(setups[setup](f, w))
        print(f"round {r + 1}/{rounds} done", flush=True)
    plain.close()
    plain_c.close()
    lines += ["", "median ms of the round medians, and their ratio to quiet `plain`:", ""]
    lines.append(f"{'load':14} {'setup':14} " + "  ".join(f"{n:>26}" for n in files))
    for load in loads:
        for setup in setups:
            cells = []
            for name in files:
                v = statistics.median(results[(load, setup, name)])
                ref = statistics.median(results[("quiet", "plain", name)])
                cells.append(f"{v:10.4f} ms ({v / ref:5.2f}x)".rjust(26))
            lines.append(f"{load:14} {setup:14} " + "  ".join(cells))
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        out.write_text(text)
    return 0


def meter_ms(meter: Any, path: Path, width: int, plan: LatencyPlan) -> float:
    """The search's meter's median for ``path``, called as a trial calls it."""
    example = np.random.default_rng(1).standard_normal((1, width)).astype(np.float32)
    return float(meter.measure(path, example, plan).stats.median_ms)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


if __name__ == "__main__":
    sys.exit(main())
