"""Wire one search: validated spec -> baseline -> Ray Tune + Optuna -> MLflow -> Pareto front."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import optuna
import pandas as pd
from mlflow.tracking import MlflowClient

from orchestrator._progress import TrialLines, format_metrics, pareto_table
from orchestrator._samplers import build_sampler
from orchestrator._searcher import OptunaAskTell
from orchestrator._tracking import (
    TrackingTarget,
    fail_run,
    log_metrics,
    log_onnx,
    open_experiment,
    resolve_tracking_uri,
    start_search_run,
)
from orchestrator._trainable import TrialContext, make_trainable
from reports import publish_front
from searchspace import SearchSpec, to_distributions
from trials import Task, TrialSettings, ensure_baseline, load_task, run_baseline


@dataclass(frozen=True)
class SearchOptions:
    """How to run a spec, from the command line: where, and with which paths."""

    config_path: Path
    workdir: Path
    address: str | None = None


@dataclass(frozen=True)
class SearchOutcome:
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    finished: int
    failed: int
    front: pd.DataFrame
    wall_seconds: float


def _local_env() -> None:
    # Local Ray workers inherit the driver's environment: set what every process needs once.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # torch configures its loggers when imported (by now): keep the exporter's notices quiet.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)


def run_search(
    spec: SearchSpec, opts: SearchOptions, *, out: TextIO | None = None
) -> SearchOutcome:
    """Run ``spec`` to the end and return where its records are."""
    out = out or sys.stdout
    t0 = time.perf_counter()
    _local_env()
    workdir = opts.workdir.resolve()
    task = load_task(spec.task)
    uri = resolve_tracking_uri(spec.tracking.uri, workdir)
    client = MlflowClient(tracking_uri=uri)
    local_store = uri.startswith("sqlite:")
    exp_id = open_experiment(
        client, spec.experiment, artifact_root=workdir / "mlruns" if local_store else None
    )
    parent = start_search_run(client, exp_id, spec, config_path=opts.config_path)
    target = TrackingTarget(uri=uri, experiment_id=exp_id, parent_run_id=parent)
    runs_dir = workdir / ".slimtune" / "runs" / parent
    cache_dir = workdir / ".slimtune" / "cache"
    print(
        f"slimtune: experiment {spec.experiment!r}, search run {parent}, tracking {uri}", file=out
    )
    try:
        _baseline(spec, client, parent, task=task, cache_dir=cache_dir, runs_dir=runs_dir, out=out)
        ctx = TrialContext(
            task_ref=spec.task,
            tracking=target,
            runs_dir=runs_dir,
            cache_dir=cache_dir,
            epochs=spec.training.epochs,
            seed=spec.seed,
            torch_threads=max(1, int(spec.resources.cpu)),
            latency_warmup=spec.latency.warmup,
            latency_repeats=spec.latency.repeats,
            latency_threads=spec.latency.threads,
        )
        finished, failed = _tune(spec, ctx, opts, runs_dir, out)
        front = publish_front(uri, parent, out_dir=runs_dir / "report")
        wall = time.perf_counter() - t0
        log_metrics(
            client,
            parent,
            {"trials_finished": finished, "trials_failed": failed, "search_seconds": wall},
        )
        client.set_terminated(parent, "FINISHED")
    except KeyboardInterrupt:
        fail_run(client, parent, "interrupted by the user", status="KILLED")
        raise
    except BaseException as exc:
        fail_run(client, parent, f"{type(exc).__name__}: {exc}")
        raise
    print(f"\n{finished} trials finished, {failed} failed in {wall:.0f} s. Pareto front:", file=out)
    if finished:
        print(pareto_table(front), file=out)
    print(f"\nInspect: mlflow ui --backend-store-uri {uri}", file=out)
    return SearchOutcome(uri, exp_id, parent, finished, failed, front, wall)


def _baseline(
    spec: SearchSpec,
    client: MlflowClient,
    parent: str,
    *,
    task: Task,
    cache_dir: Path,
    runs_dir: Path,
    out: TextIO,
) -> None:
    """Train (or load) the dense model and measure its export: the reference for every trial."""
    base = ensure_baseline(task, seed=spec.seed, cache_dir=cache_dir)
    how = "loaded from cache" if base.cached else f"trained in {base.train_seconds:.0f} s"
    work = runs_dir / "baseline"
    work.mkdir(parents=True, exist_ok=True)
    settings = TrialSettings(
        epochs=spec.training.epochs,
        seed=spec.seed,
        cache_dir=cache_dir,
        work_dir=work,
        latency_warmup=spec.latency.warmup,
        latency_repeats=spec.latency.repeats,
        latency_threads=spec.latency.threads,
    )
    result = run_baseline(task, settings)
    log_metrics(client, parent, {f"baseline_{k}": v for k, v in result.metrics.items()})
    log_onnx(client, parent, result.onnx_path, "baseline")
    print(f"dense baseline ({how}): {format_metrics(result.metrics)}", file=out, flush=True)


def _tune(
    spec: SearchSpec, ctx: TrialContext, opts: SearchOptions, runs_dir: Path, out: TextIO
) -> tuple[int, int]:
    import ray
    from ray import tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        directions=spec.directions,
        sampler=build_sampler(spec.sampler),
        study_name=ctx.tracking.parent_run_id,
    )
    searcher = OptunaAskTell(
        study, to_distributions(spec.space), spec.metric_names, max_trials=spec.trials
    )
    init_kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    if opts.address is None:
        init_kwargs["_temp_dir"] = tempfile.mkdtemp(prefix="slimtune-ray-")
    ray.init(address=opts.address, **init_kwargs)
    try:
        resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
        tuner = tune.Tuner(
            tune.with_resources(make_trainable(ctx), resources),
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                num_samples=spec.trials,
                max_concurrent_trials=spec.concurrency,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=f"search-{ctx.tracking.parent_run_id}",
                storage_path=str(runs_dir.parent.parent / "ray"),
                verbose=0,
                callbacks=[TrialLines(spec.trials, out=out)],
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
        grid = tuner.fit()
    finally:
        ray.shutdown()
    failed = len(grid.errors)
    return len(grid) - failed, failed
