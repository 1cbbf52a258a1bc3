"""Does another trial training on the same machine disturb a latency measurement?

    python benchmarks/latency_contention.py [--task digits] [--rounds 5] [--repeats 200]
        [--background 1] [--workdir DIR] [--out benchmarks/results/latency-contention.txt]
        [--smoke]

Times one artifact (the task's dense fp32 baseline, batch 1, one thread) through slimtune's own
mechanism (``orchestrator._latency``): the search's meter actor, and a real trial
(``trials.run_trial``, fine-tuning for many epochs) started as a Ray task the way a search
starts one, holding the machine's measurement gate while it works and offering it at every
training step. Each round measures, in a rotating order:

- ``quiet``: nothing else runs (the reference median, taken just before each busy one);
- ``no gate``: the trial trains while the meter measures (``pause_trials: false``);
- ``gate``: the trial trains, and pauses at its next step while the meter measures
  (``pause_trials: true``, the default);
- ``own core`` (2+ CPUs): no gate, but the trial is pinned to core 0 and the measurement (in
  this process) to the last core, with a quiet reference taken the same way: what reserving a
  CPU for the meter could give at best (Ray reserves CPUs logically and pins nothing).

``--background N`` trains N trials at once (N above the core count oversubscribes the machine,
as a search whose concurrency equals the cores does while the meter runs). A busy measurement
counts only if the trials were training through it (they reached their first step before and
were still running after). The table gives each median and p90 and their ratio to the quiet
ones taken just before; the target is a median within 5 %.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator._latency import MeterRef, SearchMeter, running_meter
from searchspace import Latency, TrialParams
from trials import (
    LatencyPlan,
    LatencyReading,
    LatencySession,
    TrialSettings,
    load_task,
    run_baseline,
    run_trial,
)

TARGET = 0.05
MODES = ("no gate", "gate", "own core")


class _Marking:
    """A trial's meter that also touches ``marker`` at the first training step, so the driver
    knows the trial is training. Everything else is the search's meter."""

    def __init__(self, meter: SearchMeter, marker: Path) -> None:
        self._meter = meter
        self._marker = marker

    def working(self) -> contextlib.AbstractContextManager[None]:
        return self._meter.working()

    def pause_point(self) -> None:
        if not self._marker.exists():
            self._marker.touch()
        self._meter.pause_point()

    def measure(self, onnx_path: Path, example: np.ndarray, plan: LatencyPlan) -> LatencyReading:
        return self._meter.measure(onnx_path, example, plan)


def _background_trial(
    ref: MeterRef, task_ref: str, settings: TrialSettings, marker: str, core: int | None
) -> None:
    """What a search's trainable does with a trial, minus MLflow: hold the gate while working,
    offer it at each step. Runs until cancelled (the epochs are many)."""
    import torch

    torch.set_num_threads(1)
    if core is not None:
        os.sched_setaffinity(0, {core})
    meter = _Marking(ref.connect(), Path(marker))
    params = TrialParams(lr=1e-3, batch_size=64, sparsity=0.5, bits=32)
    with meter.working():
        run_trial(load_task(task_ref), params, settings, meter=meter)


@dataclass(frozen=True)
class Pair:
    """One mode of one round: the quiet median taken just before the trial started, and the
    median taken while it trained, by the same method."""

    mode: str
    quiet_ms: float
    busy_ms: float
    quiet_p90_ms: float
    busy_p90_ms: float
    gate_wait_ms: float
    trained_throughout: bool

    @property
    def ratio(self) -> float:
        return self.busy_ms / self.quiet_ms


@contextlib.contextmanager
def _pinned(core: int) -> Iterator[None]:
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        import ray

        self.args = args
        self.workdir = workdir
        self.task = load_task(args.task)
        self.example = self.task.example_input().float().numpy()
        self.plan = LatencyPlan(warmup=args.warmup, repeats=args.repeats)
        self.cache = workdir / "cache"
        base = run_baseline(
            self.task,
            TrialSettings(epochs=1, seed=0, cache_dir=self.cache, work_dir=workdir / "baseline"),
        )
        self.onnx = base.onnx_path
        # No CPU reservation: --background may ask for more trials than there are cores.
        self.remote = ray.remote(num_cpus=0, max_retries=0)(_background_trial)
        self.cores = sorted(os.sched_getaffinity(0))

    def measure(self, ref: MeterRef) -> LatencyReading:
        return ref.connect().measure(self.onnx, self.example, self.plan)

    def pinned(self) -> tuple[float, float, float]:
        """Median and p90 timed in this process on the last core (no gate, no wait)."""
        session = LatencySession(self.onnx, threads=self.plan.threads)
        with _pinned(self.cores[-1]):
            stats = session.time(self.example, self.plan)
        return stats.median_ms, stats.p90_ms, 0.0

    @contextlib.contextmanager
    def training(self, ref: MeterRef, name: str, core: int | None) -> Iterator[list[bool]]:
        """``--background`` trials train while the block runs; yields a flag list, set to
        [True] when they were all training from before the block to after it."""
        import ray

        markers = [self.workdir / f"{name}-{i}.started" for i in range(self.args.background)]
        jobs = []
        for i, marker in enumerate(markers):
            marker.unlink(missing_ok=True)
            settings = TrialSettings(
                epochs=10_000,
                seed=1 + i,
                cache_dir=self.cache,
                work_dir=self.workdir / f"{name}-{i}",
                baseline_seed=0,
            )
            jobs.append(self.remote.remote(ref, self.args.task, settings, str(marker), core))
        try:
            deadline = time.monotonic() + 180
            while not all(m.exists() for m in markers):
                done, _ = ray.wait(jobs, timeout=0.2)
                if done:
                    ray.get(done)  # raises the trial's error
                    raise RuntimeError("a background trial ended before it trained")
                if time.monotonic() > deadline:
                    raise RuntimeError("the background trials did not start training in 180 s")
            time.sleep(self.args.settle)  # well into their fine-tuning
            flag: list[bool] = []
            yield flag
            done, _ = ray.wait(jobs, timeout=0)
            flag.append(not done)
        finally:
            for job in jobs:
                ray.cancel(job, force=True)
            for job in jobs:
                with contextlib.suppress(Exception):
                    ray.get(job, timeout=60)
            time.sleep(0.5)  # their processes are gone before the next measurement

    def one_round(self, index: int, gated: MeterRef, open_: MeterRef) -> list[Pair]:
        modes = [m for m in MODES if m != "own core" or len(self.cores) > 1]
        pairs = []
        for mode in modes[index % len(modes) :] + modes[: index % len(modes)]:
            ref = gated if mode == "gate" else open_
            core = self.cores[0] if mode == "own core" else None
            quiet = self.pinned() if core is not None else self.metered(ref)
            with self.training(ref, mode.replace(" ", "-"), core) as flag:
                busy = self.pinned() if core is not None else self.metered(ref)
            trained = bool(flag and flag[0])
            pairs.append(Pair(mode, quiet[0], busy[0], quiet[1], busy[1], busy[2], trained))
        return pairs

    def metered(self, ref: MeterRef) -> tuple[float, float, float]:
        """The meter's median and p90, and how long it waited for the machine (ms)."""
        reading = self.measure(ref)
        wait = reading.extra.get("latency_gate_wait_ms", 0.0)
        return reading.stats.median_ms, reading.stats.p90_ms, wait


def _table(rounds: list[list[Pair]]) -> str:
    head = (
        f"{'round':>5} {'mode':>9} {'quiet ms':>9} {'busy ms':>9} {'ratio':>6} "
        f"{'p90 quiet':>9} {'p90 busy':>9} {'ratio':>6} {'wait ms':>8}"
    )
    lines = [head]
    for i, pairs in enumerate(rounds):
        for pair in pairs:
            mark = " " if pair.trained_throughout else "!"
            lines.append(
                f"{i:>5} {pair.mode:>9} {pair.quiet_ms:>9.4f} {pair.busy_ms:>9.4f} "
                f"{pair.ratio:>6.3f}{mark}{pair.quiet_p90_ms:>9.4f} {pair.busy_p90_ms:>9.4f} "
                f"{pair.busy_p90_ms / pair.quiet_p90_ms:>6.3f} {pair.gate_wait_ms:>8.1f}"
            )
    lines.append("")
    for mode in MODES:
        ratios = [p.ratio for ps in rounds for p in ps if p.mode == mode and p.trained_throughout]
        if not ratios:
            continue
        worst = max(abs(x - 1) for x in ratios)
        verdict = "within" if worst <= TARGET else "NOT within"
        lines.append(
            f"{mode:>9}: median ratio {statistics.median(ratios):.3f}, worst |dev| "
            f"{100 * worst:.1f} % over {len(ratios)} rounds: {verdict} {100 * TARGET:.0f} %"
        )
    lines.append("ratio = busy / quiet median (and p90), the quiet one taken just before the trial")
    lines.append("started, by the same method ('own core': in this process on the last core, the")
    lines.append("trial on core 0); the 5 % target is on the median.")
    lines.append("wait = how long the gate made the measurement wait for the trial's next step;")
    lines.append("'!' = the trial was not training throughout that measurement (not counted).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="digits")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--settle", type=float, default=2.0, help="s of training before measuring")
    p.add_argument("--background", type=int, default=1, help="trials training meanwhile")
    p.add_argument("--workdir", type=Path, help="default: a temporary directory")
    p.add_argument("--out", type=Path, help="also write the result (with the command) here")
    p.add_argument("--smoke", action="store_true", help="2 rounds of 100 runs: a quick check")
    args = p.parse_args(argv)
    if args.smoke:
        args.rounds, args.repeats = 2, 100
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="latency-bench-"))).resolve()
    load_before = os.getloadavg()
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=(ray_dir := tempfile.mkdtemp(prefix="lb-ray-")),
    )
    try:
        bench = Bench(args, workdir)
        with (
            running_meter(Latency(pause_trials=True)) as gated,
            running_meter(Latency(pause_trials=False)) as open_,
        ):
            rounds = []
            for i in range(args.rounds):
                rounds.append(bench.one_round(i, gated, open_))
                print(f"round {i}: {rounds[-1]}", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()
    text = "\n".join(
        [
            f"$ python {shlex.join(['benchmarks/latency_contention.py', *(argv or sys.argv[1:])])}",
            f"{time.strftime('%Y-%m-%d %H:%M')}; {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs; load average before {load_before[0]:.2f}, after "
            f"{load_after[0]:.2f}; task {args.task} dense fp32, batch 1, 1 thread, "
            f"{args.repeats}+ runs per median; {args.background} trial(s) training beside it",
            "",
            _table(rounds),
        ]
    )
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
