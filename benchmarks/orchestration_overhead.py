"""Orchestration overhead: slimtune's real search loop around a fixed-cost CPU workload.

    .venv/bin/python benchmarks/orchestration_overhead.py [--trials 64] [--seconds 5]
        [--concurrency 2] [--config examples/digits.yaml] [--workdir DIR] [--skip-plain]

Each trial's work (``trials.run_trial``) is replaced, through ``run_search(trial_body=...)``, by
``FixedWork``: a fixed number of SHA-256 passes over a 1 MiB buffer, calibrated here to take
about ``--seconds`` on one idle core. hashlib releases the GIL while it hashes, so the same
workload runs at full speed both in Ray's worker processes and in Optuna's ``n_jobs`` threads.
Everything around it is the real search: the task's dry run, ``ray.init``, the dense baseline,
Ray Tune with our Optuna ask/tell searcher (the config's sampler), one MLflow child run per trial
(its artifact a small placeholder file instead of an ONNX model), the live Pareto front in the
driver. The objective values are a synthetic function of the knobs, so the front is not trivial.

Measured, for slimtune and for a plain ``optuna.create_study(...).optimize(n_jobs=C)`` loop on
the same workload and sampler:
- span: from the first workload start to the last workload end;
- ideal: the sum of the measured workload times / concurrency; the ratio span / ideal;
- fixed cost per trial: (span x concurrency - sum of workload times) / trials, i.e. the slot
  time per trial that was not workload; and the median gap between one workload's end and the
  next one's start in the same worker process (slimtune) or thread slot (plain Optuna);
- slimtune's whole run (``run_search`` called -> returned: dry run, ``ray.init``, baseline,
  final front, ``ray.shutdown``) with its phases, and the CPU seconds each process of the
  search used beyond the workload (driver, Ray's own processes, the trial workers).

The 1-minute load average before and after is printed: figures taken while other work ran on
the machine overstate the overhead.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/orchestration_overhead.py` from anywhere
    sys.path.insert(0, str(ROOT))
from benchmarks._overhead_report import Overhead, report, summarize  # noqa: E402
from benchmarks._overhead_timeline import (  # noqa: E402
    Transition,
    timeline_callback,
    timeline_table,
    transitions,
)
from benchmarks._tree_cpu import TreeCpu  # noqa: E402

__all__ = ["Transition", "TreeCpu", "summarize", "timeline_table", "transitions"]

_CHUNK = bytes(range(256)) * 4096  # 1 MiB, hashed repeatedly


# ---------------------------------------------------------------------------------------------
# The workload


def _hash_passes(passes: int) -> None:
    h = hashlib.sha256()
    for _ in range(passes):
        h.update(_CHUNK)  # releases the GIL for buffers this large


def calibrate(seconds: float, *, probe_s: float = 0.5) -> tuple[int, float]:
    """Passes of the workload that take about ``seconds`` on this core, and the passes/s seen."""
    _hash_passes(8)  # warm up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < probe_s:
        _hash_passes(16)
        n += 16
    rate = n / (time.perf_counter() - start)
    return max(1, round(seconds * rate)), rate


@dataclass(frozen=True)
class Timed:
    """When one workload ran (wall clock, so times from different processes compare), and the
    CPU seconds its thread used."""

    start: float
    end: float
    worker: str
    cpu: float


def timed_work(passes: int, worker: str) -> Timed:
    start, cpu = time.time(), time.thread_time()
    _hash_passes(passes)
    return Timed(start, time.time(), worker, time.thread_time() - cpu)


def synthetic_objectives(params: dict[str, Any]) -> dict[str, float]:
    """Made-up metric values that trade accuracy against size and latency (not measured)."""
    sparsity, bits = float(params["sparsity"]), int(params["bits"])
    size = 1.0e6 * (bits / 32) * (1 - 0.5 * sparsity)
    latency = 0.2 + 0.3 * bits / 32 + 0.05 * float(params["lr"]) * 100
    return {
        "accuracy": 0.99 - 0.3 * sparsity**3 - (0.01 if bits < 32 else 0.0),
        "size_bytes": size,
        "size_gzip_bytes": size * (1 - 0.8 * sparsity),
        "latency_ms": latency,
        "latency_p90_ms": latency * 1.1,
    }


@dataclass(frozen=True)
class FixedWork:
    """A trial body (``orchestrator._trainable.TrialBody``) that only runs the workload.

    It returns the synthetic objectives plus its own timing as metrics (``bench_start``,
    ``bench_end``: Unix seconds; ``bench_pid``), which land in the trial's MLflow run.
    """

    passes: int

    def __call__(self, task: Any, params: Any, settings: Any) -> Any:
        from trials import TrialResult

        t = timed_work(self.passes, str(os.getpid()))
        path = Path(settings.work_dir) / "model.onnx"
        path.write_bytes(b"orchestration benchmark placeholder, not an ONNX model\n")
        metrics = {
            **synthetic_objectives(params.to_dict()),
            "trial_seconds": t.end - t.start,
            "bench_start": t.start,
            "bench_end": t.end,
            "bench_pid": float(t.worker),
            "bench_cpu": t.cpu,
        }
        return TrialResult(metrics=metrics, tags={"artifact": "real"}, onnx_path=path)


# ---------------------------------------------------------------------------------------------
# The two runs


class _StampedLines(io.StringIO):
    """A console that remembers when each line was written (for the search's phases)."""

    def __init__(self, echo: bool) -> None:
        super().__init__()
        self.lines: list[tuple[float, str]] = []
        self._buf = ""
        self._echo = echo

    def write(self, s: str) -> int:
        self._buf += s
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self.lines.append((time.time(), line))
            if self._echo:
                print(line, file=sys.stderr)
        return len(s)

    def first(self, prefix: str) -> float | None:
        return next((t for t, line in self.lines if line.startswith(prefix)), None)


@dataclass
class SlimtuneRun:
    overhead: Overhead
    wall_s: float
    phases: list[tuple[str, float]]
    cpu_in_span: dict[str, float] = field(default_factory=dict)
    mlflow_before_ms: float = float("nan")
    mlflow_after_ms: float = float("nan")
    live_update_ms: float = float("nan")
    timeline: list[Transition] = field(default_factory=list)


def run_slimtune(
    config: Path, workdir: Path, *, trials: int, concurrency: int, passes: int, echo: bool
) -> SlimtuneRun:
    from mlflow.tracking import MlflowClient

    from orchestrator._ray_session import SearchOptions
    from orchestrator._search import run_search
    from searchspace import load_spec

    spec = load_spec(config).model_copy(
        update={"trials": trials, "concurrency": concurrency, "experiment": "orchestration"}
    )
    if FixedWork.__module__ != "__main__":
        # Imported (not run as a script): Ray's workers cannot import this file by name.
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[FixedWork.__module__])
    console = _StampedLines(echo)
    events = workdir / "tune-timeline.jsonl"
    with TreeCpu(os.getpid()) as cpu:
        t0 = time.time()
        outcome = run_search(
            spec,
            SearchOptions(config_path=config.resolve(), workdir=workdir),
            out=console,
            trial_body=FixedWork(passes),
            tune_callbacks=[timeline_callback(events)],
        )
        t_end = time.time()
    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    children = client.search_runs(
        [outcome.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}'",
        max_results=10_000,
    )
    runs, before, after = [], [], []
    timed = [c for c in children if "bench_start" in c.data.metrics]
    for c in timed:
        m = c.data.metrics
        runs.append(
            Timed(m["bench_start"], m["bench_end"], str(int(m["bench_pid"])), m["bench_cpu"])
        )
        # The run's own start and end times: MLflow calls in the worker around the workload.
        before.append(m["bench_start"] - c.info.start_time / 1000)
        after.append(c.info.end_time / 1000 - m["bench_end"])
    ov = summarize(runs, concurrency)
    marks = [
        ("task dry run", console.first("task ")),
        ("ray.init, MLflow parent run", console.first("slimtune: experiment")),
        ("dense baseline", console.first("dense baseline")),
        ("Tune setup until the first workload starts", ov.first_start),
        ("trials (first workload start -> last end)", ov.last_end),
        ("final front, plots, parent run closed", _finished(console)),
        ("ray.shutdown", t_end),
    ]
    phases, prev = [], t0
    for name, at in marks:
        if at is not None:
            phases.append((name, at - prev))
            prev = at
    in_span = cpu.between(ov.first_start, ov.last_end)
    in_span["trial workers"] = in_span.get("trial workers", 0.0) - ov.work_cpu_s
    parent = client.get_run(outcome.parent_run_id).data.metrics
    return SlimtuneRun(
        overhead=ov,
        wall_s=t_end - t0,
        phases=phases,
        cpu_in_span=in_span,
        mlflow_before_ms=1000 * statistics.median(before),
        mlflow_after_ms=1000 * statistics.median(after),
        live_update_ms=parent.get("live_update_ms_mean", float("nan")),
        timeline=transitions(timed, events),
    )


def _finished(console: _StampedLines) -> float | None:
    return next((t for t, line in console.lines if " trials finished, " in line), None)


@dataclass
class PlainRun:
    overhead: Overhead
    wall_s: float
    cpu_beyond_work_s: float


def run_plain_optuna(config: Path, *, trials: int, concurrency: int, passes: int) -> PlainRun:
    """The same workload and sampler under ``study.optimize(n_jobs=concurrency)``."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from orchestrator._samplers import build_sampler
    from searchspace import load_spec, to_distributions

    spec = load_spec(config)
    dists = to_distributions(spec.space)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=spec.directions, sampler=build_sampler(spec.sampler))
    runs: list[Timed] = []

    def suggest(trial: optuna.Trial, name: str, d: Any) -> Any:
        if isinstance(d, FloatDistribution):
            return trial.suggest_float(name, d.low, d.high, log=d.log, step=d.step)
        if isinstance(d, CategoricalDistribution):
            return trial.suggest_categorical(name, list(d.choices))
        raise TypeError(f"unexpected distribution {d!r} for {name!r}")

    def objective(trial: optuna.Trial) -> list[float]:
        params = {name: suggest(trial, name, d) for name, d in dists.items()}
        runs.append(timed_work(passes, threading.current_thread().name))
        values = synthetic_objectives(params)
        return [values[m] for m in spec.metric_names]

    cpu0, t0 = time.process_time(), time.time()
    study.optimize(objective, n_trials=trials, n_jobs=concurrency)
    wall, cpu = time.time() - t0, time.process_time() - cpu0
    ov = summarize(runs, concurrency)
    return PlainRun(ov, wall, cpu - ov.work_cpu_s)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--trials", type=int, default=64)
    p.add_argument("--seconds", type=float, default=5.0, help="workload per trial on one core")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--config", type=Path, default=Path("examples/digits.yaml"))
    p.add_argument("--workdir", type=Path, help="default: a new temporary directory")
    p.add_argument("--skip-plain", action="store_true", help="do not run plain Optuna")
    p.add_argument("--skip-slimtune", action="store_true", help="only run plain Optuna")
    p.add_argument("--verbose", action="store_true", help="echo the search's console to stderr")
    args = p.parse_args(argv)
    if args.trials < 1 or args.seconds <= 0 or args.concurrency < 1:
        p.error("--trials and --concurrency must be >= 1 and --seconds > 0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="slimtune-overhead-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()[0]
    passes, rate = calibrate(args.seconds)
    slim = plain = None
    if not args.skip_slimtune:
        slim = run_slimtune(
            args.config,
            workdir,
            trials=args.trials,
            concurrency=args.concurrency,
            passes=passes,
            echo=args.verbose,
        )
    if not args.skip_plain:
        plain = run_plain_optuna(
            args.config, trials=args.trials, concurrency=args.concurrency, passes=passes
        )
    print(report(args, passes, rate, (load0, os.getloadavg()[0]), slim, plain))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
