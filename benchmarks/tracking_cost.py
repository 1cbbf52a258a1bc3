"""Tracking cost: the time a trial spends in MLflow calls, as a share of its wall time.

    .venv/bin/python benchmarks/tracking_cost.py [--trials 4] [--config examples/digits.yaml]
        [--workdir DIR]

Runs slimtune's real trial function (``orchestrator._trainable.make_trainable``: run lookup,
child run, parameters, the real digits trial with the config's epochs and latency settings,
metrics, tags, the ONNX artifact, the rebuild record, end of run) ``--trials`` times in this
process, against a local SQLite store, the way a reused Ray worker runs one trial after another.
Outside Ray Tune, ``tune.report`` only warns and returns; everything else is what a worker does.

Every ``MlflowClient`` method call is timed (outermost calls only; the calls go through
unchanged), so the report gives the MLflow time per trial, by method, and its share of the trial
function's wall time. The experiment, the parent run and the dense baseline are made first in a
separate process, so that the first trial pays what a fresh worker pays (the SQLite store's
set-up), reported apart from the per-trial figure. After each trial the driver's live Pareto
update (``orchestrator._live.LiveFront.update``) runs too and is timed: MLflow work of the
search that is not on the trial's path.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TIMED_METHODS = (
    "__init__",
    "create_run",
    "get_run",
    "update_run",
    "search_runs",
    "log_batch",
    "log_metric",
    "log_param",
    "set_tag",
    "log_artifact",
    "log_artifacts",
    "log_text",
    "log_dict",
    "set_terminated",
    "get_metric_history",
    "get_experiment",
)


class MlflowTimer:
    """Times every call of the ``MlflowClient`` methods above, outermost calls only (a method
    that calls another counts once), per thread of this process."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []
        self._depth = threading.local()

    def install(self) -> None:
        from mlflow.tracking import MlflowClient

        for name in _TIMED_METHODS:
            if hasattr(MlflowClient, name):
                setattr(MlflowClient, name, self._wrap(name, getattr(MlflowClient, name)))

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(self._depth, "n", 0)
            self._depth.n = depth + 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth.n = depth
                if depth == 0:
                    self.calls.append((_label(name, kwargs), time.perf_counter() - start))

        return timed

    def take(self) -> list[tuple[str, float]]:
        calls, self.calls = self.calls, []
        return calls


def _label(name: str, kwargs: dict[str, Any]) -> str:
    """``log_batch(metrics+tags)``: which parts a batch carried; other calls by name."""
    if name != "log_batch":
        return name
    parts = [k for k in ("metrics", "params", "tags") if kwargs.get(k)]
    return f"log_batch({'+'.join(parts)})"


@dataclass(frozen=True)
class Setup:
    tracking_uri: str
    experiment_id: str
    parent_run_id: str


def _setup(config: Path, workdir: Path, wal: bool) -> Setup:
    """Experiment, parent run (the store in WAL mode) and the dense baseline's metrics (what the
    live front compares with), made as ``run_search`` makes them, in a child process: this one
    must not touch the store before the first trial."""
    from mlflow.tracking import MlflowClient

    from orchestrator._tracking import (
        log_metrics,
        open_experiment,
        resolve_tracking_uri,
        start_search_run,
        use_wal,
    )
    from searchspace import load_spec
    from trials import TrialSettings, ensure_baseline, load_task, run_baseline

    spec = load_spec(config)
    uri = resolve_tracking_uri(None, workdir)
    client = MlflowClient(tracking_uri=uri)
    exp = open_experiment(client, "tracking-cost", artifact_root=workdir / "mlruns")
    if wal:
        use_wal(uri)  # as run_search does for a search on this machine
    parent = start_search_run(client, exp, spec, config_path=config.resolve())
    task = load_task(spec.task)
    cache_dir = workdir / ".slimtune" / "cache"
    ensure_baseline(task, seed=spec.seed, cache_dir=cache_dir)
    settings = TrialSettings.for_search(
        spec,
        seed=spec.seed,
        cache_dir=cache_dir,
        work_dir=workdir / ".slimtune" / "runs" / parent / "baseline",
    )
    result = run_baseline(task, settings)
    log_metrics(client, parent, {f"baseline_{k}": v for k, v in result.metrics.items()})
    return Setup(uri, exp, parent)


@dataclass(frozen=True)
class TrialCost:
    wall_s: float
    mlflow_s: float
    calls: list[tuple[str, float]]
    live_s: float

    @property
    def share(self) -> float:
        return self.mlflow_s / self.wall_s


def run_trials(config: Path, workdir: Path, setup: Setup, trials: int) -> list[TrialCost]:
    import optuna
    import torch

    from orchestrator._live import LiveFront
    from orchestrator._searcher import TRIAL_NUMBER_KEY
    from orchestrator._tracking import TrackingTarget
    from orchestrator._trainable import TrialContext, make_trainable
    from searchspace import load_spec, to_distributions

    spec = load_spec(config)
    runs_dir = workdir / ".slimtune" / "runs" / setup.parent_run_id
    # As orchestrator._search._run builds it for a local search (latency measured in-process).
    ctx = TrialContext(
        tracking=TrackingTarget(setup.tracking_uri, setup.experiment_id, setup.parent_run_id),
        runs_dir=runs_dir,
        cache_dir=workdir / ".slimtune" / "cache",
        spec=spec,
        baseline_threads=torch.get_num_threads(),
    )
    trainable = make_trainable(ctx)
    live = LiveFront(setup.tracking_uri, setup.parent_run_id, out=sys.stderr)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        directions=spec.directions, sampler=optuna.samplers.RandomSampler(seed=spec.seed)
    )
    dists = to_distributions(spec.space)
    timer = MlflowTimer()
    timer.install()
    out = []
    for number in range(trials):
        proposal = study.ask(dists)
        start = time.perf_counter()
        trainable({**proposal.params, TRIAL_NUMBER_KEY: number})
        wall = time.perf_counter() - start
        calls = timer.take()
        live_start = time.perf_counter()
        live.update()
        live_s = time.perf_counter() - live_start
        timer.take()  # the live update's own MLflow calls are counted in live_s
        out.append(TrialCost(wall, sum(s for _, s in calls), calls, live_s))
        print(
            f"trial {number}: {wall:.2f} s, MLflow {1000 * out[-1].mlflow_s:.0f} ms "
            f"({100 * out[-1].share:.2f} %)",
            file=sys.stderr,
            flush=True,
        )
    return out


def report(
    args: argparse.Namespace, costs: list[TrialCost], load: tuple[float, float], epochs: int
) -> str:
    later = costs[1:] or costs
    per_method: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    for c in later:
        for name, s in c.calls:
            per_method.setdefault(name, []).append(s)
            counts[name] = counts.get(name, 0) + 1
    n = len(later)
    methods = "; ".join(
        f"{name} x{counts[name] / n:g} {1000 * sum(v) / n:.1f} ms"
        for name, v in sorted(per_method.items(), key=lambda kv: -sum(kv[1]))
    )
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])
    journal = "rollback journal (--no-wal)" if args.no_wal else "WAL mode, as a search sets it"
    first = costs[0]
    lines = [
        f"#### {len(costs)} real trials of {args.config} ({epochs} epochs as configured)",
        "",
        f"Command: `{command}`  ",
        f"Taken {time.strftime('%Y-%m-%d %H:%M')} on {platform.node() or 'this machine'} "
        f"({os.cpu_count()} CPUs); load average (1 min) {load[0]:.2f} before, {load[1]:.2f} "
        f"after. MLflow store: local SQLite, {journal}.",
        "",
        "| trial | trial function wall (s) | in MLflow calls (ms) | share |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| {i}{' (first in its process)' if i == 0 else ''} | {c.wall_s:.2f} | "
            f"{1000 * c.mlflow_s:.0f} | {100 * c.share:.2f} % |"
            for i, c in enumerate(costs)
        ),
        f"| **median of trials 1..** | {statistics.median(c.wall_s for c in later):.2f} | "
        f"{1000 * statistics.median(c.mlflow_s for c in later):.0f} | "
        f"**{100 * statistics.median(c.share for c in later):.2f} %** |",
        "",
        f"MLflow calls per trial (trials 1.., mean): {methods}.",
        f"The first trial in a fresh process also sets up the SQLite store: "
        f"{1000 * (first.mlflow_s - statistics.median(c.mlflow_s for c in later)):.0f} ms more "
        "(once per worker: Ray Tune reuses the workers).",
        f"Live Pareto update in the driver after each trial (off the trial's path): "
        f"{1000 * statistics.mean(c.live_s for c in costs):.0f} ms mean.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--config", type=Path, default=Path("examples/digits.yaml"))
    p.add_argument("--workdir", type=Path, help="default: a new temporary directory")
    p.add_argument(
        "--no-wal",
        action="store_true",
        help="keep SQLite's default rollback journal (a search sets WAL mode; for comparison)",
    )
    args = p.parse_args(argv)
    if args.trials < 2:
        p.error("--trials must be >= 2 (the first trial in a process is reported apart)")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="slimtune-tracking-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()[0]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        setup = pool.apply(_setup, (args.config, workdir, not args.no_wal))
    costs = run_trials(args.config, workdir, setup, args.trials)
    from searchspace import load_spec

    epochs = load_spec(args.config).training.epochs
    print(report(args, costs, (load0, os.getloadavg()[0]), epochs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
