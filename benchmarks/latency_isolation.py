"""Which ``latency.isolation`` keeps a measurement honest while trials train, and at what cost?

    python benchmarks/latency_isolation.py [--task digits] [--rounds 3] [--repeats 200]
        [--background 1] [--busy-s 4] [--workdir DIR] [--out FILE] [--smoke]

The successor of ``latency_contention.py`` (retired; see benchmarks/BENCHMARKS.md) for issue
14. It times one artifact (the task's dense fp32 baseline, batch 1, one thread) through the
search's own meter actors, one per mode
(``orchestrator._latency.running_meter``), while ``--background`` real trials
(``trials.run_trial``, fine-tuning for many epochs, started as Ray tasks and doing at start
what a search's trainable does: ``MeterRef.pin_trial``) train on the same machine:

- ``pause``: the trials wait at their next training step while the meter measures (the gate);
- ``cores``: the meter holds the last core (``latency.cpus: 1``), the trials keep to the
  others; nobody waits;
- ``none``: nothing; the trials train beside the measurement.

Each round, per mode (in a rotating order): a quiet reference (the same meter, nothing
training), then the trials start, train for ``--settle`` s (their free-running steps/s is
counted), and the meter measures back to back for ``--busy-s`` s (the worst case for the gate,
which pauses the trials for every measurement; their steps/s meanwhile is counted too). The
table gives per mode the median, p90 and CV of single runs (std/mean), quiet and busy, their
ratios, and the trials' training throughput (steps/s, summed over the trials).
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
from trials import LatencyPlan, LatencyReading, TrialSettings, load_task, run_baseline, run_trial

MODES = ("pause", "cores", "none")
TARGET = 0.05


class _Counting:
    """A trial's meter that also writes how many training steps it has made to ``counter``
    (at each step), so the driver sees the trial train and counts its throughput."""

    def __init__(self, meter: SearchMeter, counter: Path) -> None:
        self._meter = meter
        self._counter = counter
        self._steps = 0

    def working(self) -> contextlib.AbstractContextManager[None]:
        return self._meter.working()

    def pause_point(self) -> None:
        self._steps += 1
        self._counter.write_text(str(self._steps))
        self._meter.pause_point()

    def measure(self, onnx_path: Path, example: np.ndarray, plan: LatencyPlan) -> LatencyReading:
        return self._meter.measure(onnx_path, example, plan)


def _background_trial(ref: MeterRef, task_ref: str, settings: TrialSettings, counter: str) -> None:
    """What a search's trainable does with a trial, minus MLflow: keep off the meter's cores,
    one torch thread, hold the gate while working. Runs until cancelled (many epochs)."""
    import torch

    ref.pin_trial()
    torch.set_num_threads(1)
    meter = _Counting(ref.connect(), Path(counter))
    params = TrialParams(lr=1e-3, batch_size=64, sparsity=0.5, bits=32)
    with meter.working():
        run_trial(load_task(task_ref), params, settings, meter=meter)


@dataclass(frozen=True)
class Figures:
    """Median, p90 and CV of single runs (median over the readings taken), and the gate wait."""

    median_ms: float
    p90_ms: float
    cv: float
    wait_ms: float = 0.0

    @classmethod
    def of(cls, readings: list[LatencyReading]) -> Figures:
        return cls(
            statistics.median(r.stats.median_ms for r in readings),
            statistics.median(r.stats.p90_ms for r in readings),
            statistics.median(r.stats.cv for r in readings),
            statistics.median(r.extra.get("latency_gate_wait_ms", 0.0) for r in readings),
        )


@dataclass(frozen=True)
class Row:
    """One mode of one round."""

    mode: str
    quiet: Figures
    busy: Figures
    readings: int
    free_steps_s: float  # the trials' steps/s while nothing is measured
    busy_steps_s: float  # ... while the meter measures back to back
    trained_throughout: bool


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        import ray

        self.args = args
        self.workdir = workdir
        task = load_task(args.task)
        self.example = task.example_input().float().numpy()
        self.plan = LatencyPlan(warmup=args.warmup, repeats=args.repeats)
        self.cache = workdir / "cache"
        base = run_baseline(
            task,
            TrialSettings(epochs=1, seed=0, cache_dir=self.cache, work_dir=workdir / "baseline"),
        )
        self.onnx = base.onnx_path
        self.remote = ray.remote(num_cpus=0, max_retries=0)(_background_trial)

    def measure(self, ref: MeterRef) -> LatencyReading:
        return ref.connect().measure(self.onnx, self.example, self.plan)

    @contextlib.contextmanager
    def training(self, ref: MeterRef, name: str) -> Iterator[list[Path]]:
        """The ``--background`` trials train while the block runs (yields their counters)."""
        import ray

        counters = [self.workdir / f"{name}-{i}.steps" for i in range(self.args.background)]
        jobs = []
        for i, counter in enumerate(counters):
            counter.unlink(missing_ok=True)
            settings = TrialSettings(
                epochs=10_000,
                seed=1 + i,
                cache_dir=self.cache,
                work_dir=self.workdir / f"{name}-{i}",
                baseline_seed=0,
            )
            jobs.append(self.remote.remote(ref, self.args.task, settings, str(counter)))
        try:
            deadline = time.monotonic() + 180
            while not all(c.exists() for c in counters):
                done, _ = ray.wait(jobs, timeout=0.2)
                if done:
                    ray.get(done)  # raises the trial's error
                    raise RuntimeError("a background trial ended before it trained")
                if time.monotonic() > deadline:
                    raise RuntimeError("the background trials did not start training in 180 s")
            yield counters
            done, _ = ray.wait(jobs, timeout=0)
            if done:
                raise RuntimeError("a background trial ended while it was measured beside")
        finally:
            for job in jobs:
                ray.cancel(job, force=True)
            for job in jobs:
                with contextlib.suppress(Exception):
                    ray.get(job, timeout=60)
            time.sleep(0.5)  # their processes are gone before the next measurement

    def one(self, mode: str, ref: MeterRef) -> Row:
        quiet = [self.measure(ref) for _ in range(3)]
        with self.training(ref, mode) as counters:
            n0, t0 = _steps(counters), time.monotonic()
            time.sleep(self.args.settle)
            n1, t1 = _steps(counters), time.monotonic()
            busy: list[LatencyReading] = []
            while time.monotonic() - t1 < self.args.busy_s or not busy:
                busy.append(self.measure(ref))
            n2, t2 = _steps(counters), time.monotonic()
        return Row(
            mode,
            Figures.of(quiet),
            Figures.of(busy),
            len(busy),
            (n1 - n0) / (t1 - t0),
            (n2 - n1) / (t2 - t1),
            trained_throughout=n2 > n1,
        )


def _steps(counters: list[Path]) -> int:
    total = 0
    for counter in counters:
        with contextlib.suppress(FileNotFoundError, ValueError):
            total += int(counter.read_text() or 0)
    return total


def table(rounds: list[list[Row]]) -> str:
    head = (
        f"{'round':>5} {'mode':>6} {'quiet ms':>9} {'busy ms':>9} {'ratio':>6} "
        f"{'p90 q':>8} {'p90 b':>8} {'ratio':>6} {'CV q':>6} {'CV b':>6} "
        f"{'wait ms':>8} {'n':>4} {'steps/s free':>12} {'steps/s busy':>12}"
    )
    lines = [head]
    for i, rows in enumerate(rounds):
        for r in rows:
            mark = " " if r.trained_throughout else "!"
            lines.append(
                f"{i:>5} {r.mode:>6} {r.quiet.median_ms:>9.4f} {r.busy.median_ms:>9.4f} "
                f"{r.busy.median_ms / r.quiet.median_ms:>6.3f}{mark}"
                f"{r.quiet.p90_ms:>8.4f} {r.busy.p90_ms:>8.4f} "
                f"{r.busy.p90_ms / r.quiet.p90_ms:>6.3f} {r.quiet.cv:>6.3f} {r.busy.cv:>6.3f} "
                f"{r.busy.wait_ms:>8.1f} {r.readings:>4} {r.free_steps_s:>12.1f} "
                f"{r.busy_steps_s:>12.1f}"
            )
    lines.append("")
    none_free = [r.free_steps_s for rows in rounds for r in rows if r.mode == "none"]
    for mode in MODES:
        rows = [r for rs in rounds for r in rs if r.mode == mode and r.trained_throughout]
        if not rows:
            continue
        ratios = [r.busy.median_ms / r.quiet.median_ms for r in rows]
        p90 = [r.busy.p90_ms / r.quiet.p90_ms for r in rows]
        worst = max(abs(x - 1) for x in ratios)
        free = statistics.median(r.free_steps_s for r in rows)
        busy = statistics.median(r.busy_steps_s for r in rows)
        rel = f" ({free / statistics.median(none_free):.2f}x none's)" if none_free else ""
        lines.append(
            f"{mode:>6}: median ratio {statistics.median(ratios):.3f} (worst |dev| "
            f"{worst:.1%}: {'within' if worst <= TARGET else 'NOT within'} {TARGET:.0%}), "
            f"p90 ratio {statistics.median(p90):.3f}, CV busy "
            f"{statistics.median(r.busy.cv for r in rows):.3f} vs quiet "
            f"{statistics.median(r.quiet.cv for r in rows):.3f}; training {free:.1f} steps/s "
            f"free{rel}, {busy:.1f} while measured back to back"
        )
    lines += [
        "ratio = busy / quiet (median, p90), the quiet one taken by the same meter just before",
        "the trials started; CV = std/mean of single runs; n = measurements in the busy window",
        "steps/s = training steps per second of the trials together: 'free' while nothing is",
        "measured (cores: the trials keep off the meter's core), 'busy' while the meter",
        "measures back to back; '!' = the trials did not train through the busy window.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="digits")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--settle", type=float, default=2.0, help="s of training before measuring")
    p.add_argument("--busy-s", type=float, default=4.0, help="s of back-to-back measurements")
    p.add_argument("--background", type=int, default=1, help="trials training meanwhile")
    p.add_argument("--workdir", type=Path, help="default: a temporary directory")
    p.add_argument("--out", type=Path, help="also write the result (with the command) here")
    p.add_argument("--smoke", action="store_true", help="1 short round: checks the script")
    args = p.parse_args(argv)
    if args.smoke:
        args.rounds, args.repeats, args.settle, args.busy_s = 1, 50, 1.0, 1.0
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="latency-iso-"))).resolve()
    load_before = os.getloadavg()
    ray_dir = tempfile.mkdtemp(prefix="li-ray-")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _temp_dir=ray_dir)
    modes = [m for m in MODES if m != "cores" or len(os.sched_getaffinity(0)) > 1]
    try:
        bench = Bench(args, workdir)
        plan = {"warmup": args.warmup, "repeats": args.repeats}
        with contextlib.ExitStack() as stack:
            refs = {
                m: stack.enter_context(
                    running_meter(
                        Latency(isolation=m, cpus=1 if m == "cores" else 0, **plan),  # type: ignore[arg-type]
                        trial_cpus=1,
                    )
                )
                for m in modes
            }
            rounds = []
            for i in range(args.rounds):
                order = modes[i % len(modes) :] + modes[: i % len(modes)]
                rounds.append([bench.one(m, refs[m]) for m in order])
                print(f"round {i}: {rounds[-1]}", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()
    text = "\n".join(
        [
            f"$ python {shlex.join(['benchmarks/latency_isolation.py', *(argv or sys.argv[1:])])}",
            f"{time.strftime('%Y-%m-%d %H:%M')}; {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs; load average before {load_before[0]:.2f}, after "
            f"{load_after[0]:.2f}; task {args.task} dense fp32, batch 1, 1 thread, "
            f"{args.repeats}+ runs per median; {args.background} trial(s) training beside it",
            "",
            table(rounds),
        ]
    )
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
