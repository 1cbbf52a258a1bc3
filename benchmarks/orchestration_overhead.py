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
import itertools
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_CHUNK = bytes(range(256)) * 4096  # 1 MiB, hashed repeatedly
_CLK_TCK = os.sysconf("SC_CLK_TCK")


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
# Summaries


@dataclass(frozen=True)
class Overhead:
    """What a run of ``trials`` workloads at ``concurrency`` cost beyond the workload itself.

    The slot time that was not workload (``span x concurrency - work``) splits, per worker, into
    the wait before its first workload (``lead_s``), the gaps between its workloads
    (``gaps_s``) and the time after its last one (``tail_s``), when there were ``concurrency``
    workers (else the split is not printed)."""

    trials: int
    concurrency: int
    workers: int
    work_s: float  # sum of the workloads' wall times
    work_cpu_s: float  # sum of the workloads' CPU times
    first_start: float
    last_end: float
    gaps_ms: tuple[float, ...]
    lead_s: float
    tail_s: float

    @property
    def span_s(self) -> float:
        return self.last_end - self.first_start

    @property
    def ideal_s(self) -> float:
        return self.work_s / self.concurrency

    @property
    def ratio(self) -> float:
        return self.span_s / self.ideal_s

    @property
    def fixed_cost_ms(self) -> float:
        return 1000 * (self.span_s * self.concurrency - self.work_s) / self.trials

    @property
    def gap_median_ms(self) -> float:
        return statistics.median(self.gaps_ms) if self.gaps_ms else float("nan")


def summarize(runs: Sequence[Timed], concurrency: int) -> Overhead:
    if not runs:
        raise SystemExit("no trial finished its workload; nothing to measure")
    first, last = min(t.start for t in runs), max(t.end for t in runs)
    gaps: list[float] = []
    lead = tail = 0.0
    by_worker: dict[str, list[Timed]] = {}
    for t in runs:
        by_worker.setdefault(t.worker, []).append(t)
    for ts in by_worker.values():
        ts.sort(key=lambda t: t.start)
        gaps += [1000 * (b.start - a.end) for a, b in itertools.pairwise(ts)]
        lead += ts[0].start - first
        tail += last - ts[-1].end
    return Overhead(
        trials=len(runs),
        concurrency=concurrency,
        workers=len(by_worker),
        work_s=sum(t.end - t.start for t in runs),
        work_cpu_s=sum(t.cpu for t in runs),
        first_start=first,
        last_end=last,
        gaps_ms=tuple(gaps),
        lead_s=lead,
        tail_s=tail,
    )


# ---------------------------------------------------------------------------------------------
# CPU accounting of a process tree (the driver, Ray's processes, the workers), from /proc


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


def _timeline_callback(path: Path) -> Any:
    """A Ray Tune callback that writes when the driver saw each trial start, report and
    complete (Unix seconds) to ``path`` as JSON lines when the experiment ends. The Tuner
    pickles its callbacks, so the events go through a file, not this object."""
    from ray.tune import Callback

    class TuneTimeline(Callback):
        def __init__(self) -> None:
            self.events: list[tuple[str, str, float]] = []

        def on_trial_start(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
            self.events.append(("start", trial.trial_id, time.time()))

        def on_trial_result(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
            self.events.append(("result", trial.trial_id, time.time()))

        def on_trial_complete(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
            self.events.append(("complete", trial.trial_id, time.time()))

        def on_experiment_end(self, trials: Any, **info: Any) -> None:
            path.write_text("".join(json.dumps(e) + "\n" for e in self.events))

    return TuneTimeline()


@dataclass(frozen=True)
class Transition:
    """One worker going from trial ``prev`` to trial ``next``: Unix seconds of each step."""

    work_end: float  # prev's workload returned (worker)
    run_end: float  # prev's MLflow run terminated (worker; MLflow keeps milliseconds)
    result: float  # the driver saw prev's report (Tune callback)
    complete: float  # the driver completed prev
    start: float  # the driver started next on a reused worker
    run_start: float  # next's MLflow run created (worker)
    work_start: float  # next's workload started (worker)

    STEPS = (
        (
            "MLflow after the workload (worker: metrics, tags, artifacts, end of run)",
            "work_end",
            "run_end",
        ),
        ("report reaches the driver (worker -> driver)", "run_end", "result"),
        (
            "driver: result -> trial complete (stopper, callbacks, Optuna tell)",
            "result",
            "complete",
        ),
        ("driver: complete -> next trial started (Optuna ask, actor reuse)", "complete", "start"),
        (
            "next trial's function starts, run lookup, run created (driver -> worker)",
            "start",
            "run_start",
        ),
        ("MLflow before the workload (worker: params)", "run_start", "work_start"),
    )


def transitions(runs: Sequence[Any], events_path: Path) -> list[Transition]:
    """Pair each trial's MLflow run with the next trial in the same worker process."""
    seen: dict[tuple[str, str], float] = {}
    for line in events_path.read_text().splitlines():
        kind, trial_id, at = json.loads(line)
        seen.setdefault((kind, trial_id), at)  # first time each
    by_worker: dict[int, list[Any]] = {}
    for run in runs:
        by_worker.setdefault(int(run.data.metrics["bench_pid"]), []).append(run)
    out: list[Transition] = []
    for rs in by_worker.values():
        rs.sort(key=lambda r: r.data.metrics["bench_start"])
        for a, b in itertools.pairwise(rs):
            ida, idb = a.data.tags["slimtune.trial_id"], b.data.tags["slimtune.trial_id"]
            keys = [("result", ida), ("complete", ida), ("start", idb)]
            if any(k not in seen for k in keys):
                continue
            out.append(
                Transition(
                    work_end=a.data.metrics["bench_end"],
                    run_end=a.info.end_time / 1000,
                    result=seen[keys[0]],
                    complete=seen[keys[1]],
                    start=seen[keys[2]],
                    run_start=b.info.start_time / 1000,
                    work_start=b.data.metrics["bench_start"],
                )
            )
    return out


def timeline_table(ts: Sequence[Transition]) -> list[str]:
    """Median and mean of each step of the gap between two workloads in one worker."""
    if not ts:
        return ["(no transition between two trials in one worker was seen)"]
    rows = ["| step of the gap | median (ms) | mean (ms) |", "| --- | ---: | ---: |"]
    total = [1000 * (t.work_start - t.work_end) for t in ts]
    for name, a, b in Transition.STEPS:
        ms = [1000 * (getattr(t, b) - getattr(t, a)) for t in ts]
        rows.append(f"| {name} | {statistics.median(ms):.1f} | {statistics.fmean(ms):.1f} |")
    rows.append(
        f"| **whole gap** ({len(ts)} transitions) | **{statistics.median(total):.1f}** | "
        f"**{statistics.fmean(total):.1f}** |"
    )
    return rows


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

    from orchestrator._search import SearchOptions, run_search
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
            tune_callbacks=[_timeline_callback(events)],
        )
        t_end = time.time()
    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    children = client.search_runs(
        [outcome.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}'",
        max_results=10_000,
    )
    runs, before, after = [], [], []
    children = [c for c in children if "bench_start" in c.data.metrics]
    for c in children:
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
        timeline=transitions(children, events),
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


# ---------------------------------------------------------------------------------------------
# Report


def _row(name: str, values: Sequence[str]) -> str:
    return f"| {name} | " + " | ".join(values) + " |"


def report(
    args: argparse.Namespace,
    passes: int,
    rate: float,
    load: tuple[float, float],
    slim: SlimtuneRun | None,
    plain: PlainRun | None,
) -> str:
    cols: list[tuple[str, Overhead]] = []
    if slim:
        cols.append(("slimtune", slim.overhead))
    if plain:
        cols.append(("plain Optuna", plain.overhead))
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])
    lines = [
        f"#### {args.trials} trials x {args.seconds:g} s at concurrency {args.concurrency}",
        "",
        f"Command: `{command}`  ",
        f"Taken {time.strftime('%Y-%m-%d %H:%M')} on {platform.node() or 'this machine'} "
        f"({os.cpu_count()} CPUs); load average (1 min) {load[0]:.2f} before, {load[1]:.2f} "
        f"after. Workload: {passes} SHA-256 passes over 1 MiB ({rate:.0f} passes/s when "
        "calibrated).",
        "",
        _row("", [n for n, _ in cols]),
        _row("---", ["---:"] * len(cols)),
        _row("trials", [str(o.trials) for _, o in cols]),
        _row("sum of workload times (s)", [f"{o.work_s:.2f}" for _, o in cols]),
        _row(f"ideal = sum / {args.concurrency} (s)", [f"{o.ideal_s:.2f}" for _, o in cols]),
        _row("first start -> last end (s)", [f"{o.span_s:.2f}" for _, o in cols]),
        _row("**span / ideal**", [f"**{o.ratio:.3f}x**" for _, o in cols]),
        _row("**fixed cost per trial (ms)**", [f"**{o.fixed_cost_ms:.0f}**" for _, o in cols]),
        _row(
            "gap between workloads in one worker: median / mean / max (ms)",
            [
                f"{o.gap_median_ms:.0f} / {statistics.fmean(o.gaps_ms or [0]):.0f} / "
                f"{max(o.gaps_ms or [0]):.0f}"
                for _, o in cols
            ],
        ),
        _row(
            "slot time not in workload: before first / gaps / after last (s)",
            [
                f"{o.lead_s:.2f} / {sum(o.gaps_ms) / 1000:.2f} / {o.tail_s:.2f}"
                if o.workers == o.concurrency
                else f"({o.workers} workers)"
                for _, o in cols
            ],
        ),
    ]
    if slim and plain:
        lines.append(_row("whole run (s)", [f"{slim.wall_s:.1f}", f"{plain.wall_s:.1f}"]))
    if slim:
        phases = "; ".join(f"{n} {s:.2f}" for n, s in slim.phases)
        cpu = "; ".join(f"{k} {v:.2f}" for k, v in slim.cpu_in_span.items())
        lines += [
            "",
            f"slimtune's whole run {slim.wall_s:.1f} s (run_search called -> returned), by phase "
            f"(s): {phases}.",
            f"CPU seconds used during the trial span beyond the workload, by process: {cpu}.",
            f"Per trial in the worker (median): MLflow run created -> workload starts "
            f"{slim.mlflow_before_ms:.0f} ms; workload ends -> run terminated "
            f"{slim.mlflow_after_ms:.0f} ms. Live front update in the driver: "
            f"{slim.live_update_ms:.0f} ms per trial (mean).",
            "",
            "Where the gap between two workloads in one worker goes (the driver's Tune events, "
            "the worker's MLflow run times and workload times; one clock):",
            "",
            *timeline_table(slim.timeline),
        ]
    if plain:
        lines.append(
            f"Plain Optuna: whole optimize() {plain.wall_s:.1f} s; CPU seconds beyond the "
            f"workload {plain.cpu_beyond_work_s:.2f}."
        )
    return "\n".join(lines)


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
