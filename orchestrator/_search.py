"""Wire one search: validated spec -> baseline -> Ray Tune + Optuna -> MLflow -> Pareto front."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import pandas as pd
import torch
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from orchestrator._baseline import BaselineFailed, measure_baseline
from orchestrator._int8 import check_named_int8_format, resolution_tags, resolve_int8_format
from orchestrator._latency import MeterRef, running_meter
from orchestrator._progress import (
    cost_summary,
    pareto_table,
    table_knobs,
)
from orchestrator._ray_session import (
    SearchOptions,
    SearchStart,
    local_env,
    ray_address,
    start_search,
)
from orchestrator._records import (
    RecordsLost,
    RecordsWatch,
    SearchInterrupted,
    StoreIdentity,
    check_account,
    end_failed,
    end_interrupted,
    records_unwritable,
)
from orchestrator._resume import check_resume_config
from orchestrator._sigint import remembered_sigint
from orchestrator._state import check_resume_state
from orchestrator._tracking import (
    TrackingTarget,
    log_metrics,
    open_experiment,
    probe_tracking,
    redact_uri,
    reopen_run,
    resolve_tracking_uri,
    resumable_search_run,
    start_search_run,
    use_wal,
)
from orchestrator._trainable import (
    TrialBody,
    TrialContext,
)
from orchestrator._tune import SearchStopped, run_tune
from reports import publish_front
from searchspace import SearchSpec, SlimtuneError, to_distributions
from trials import (
    Task,
    run_trial,
)


@dataclass(frozen=True)
class SearchOutcome:
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    finished: int
    failed: int
    front: pd.DataFrame
    wall_seconds: float


def run_search(
    spec: SearchSpec,
    opts: SearchOptions,
    *,
    out: TextIO | None = None,
    trial_body: TrialBody = run_trial,
    tune_callbacks: Sequence[Callback] = (),
    started: SearchStart | None = None,
) -> SearchOutcome:
    """Run ``spec`` to the end and return where its records are.

    ``trial_body`` is what each trial does inside its MLflow run (``trials.run_trial``) and
    ``tune_callbacks`` are Ray Tune callbacks added to the search's own; only the orchestration
    benchmark sets them (a fixed workload, and a timeline of the driver's trial events).
    ``started``: Ray up and the task dry-run for this search (``start_search``, which
    ``slimtune search`` enters before it imports this module); None: started here.

    Order matters: the task's dry run and the cluster's resources are checked before anything
    is written to MLflow, so a search that cannot run leaves no half-made records.
    """
    out = out or sys.stdout
    t0 = time.perf_counter()
    local_env()  # before MLflow and Ray are touched (start_search sets it again: no change)
    workdir = opts.workdir.resolve()
    uri = resolve_tracking_uri(spec.tracking.uri, workdir)
    if started is None:
        probe_tracking(uri)
        if opts.resume:
            _check_resume(spec, uri, workdir, out)
        with start_search(spec, opts) as started:
            return _started(spec, opts, started, uri, t0, out, trial_body, tune_callbacks)
    probe_tracking(uri)
    return _started(spec, opts, started, uri, started.began, out, trial_body, tune_callbacks)


def _check_resume(spec: SearchSpec, uri: str, workdir: Path, out: TextIO) -> None:
    """Before Ray and before MLflow is written: a config other than the one the search started
    with is refused with nothing recorded altered; a damaged state (which would make Ray hang)
    or a planted one (which would run code) is refused (exit 2)."""
    check_resume_config(MlflowClient(tracking_uri=uri), spec, out=out)
    space = to_distributions(spec.space)
    check_resume_state(MlflowClient(tracking_uri=uri), spec, workdir, space)


def _started(
    spec: SearchSpec,
    opts: SearchOptions,
    started: SearchStart,
    uri: str,
    t0: float,
    out: TextIO,
    trial_body: TrialBody,
    tune_callbacks: Sequence[Callback],
) -> SearchOutcome:
    # Before MLflow: a latency meter that cannot start leaves no half-made records.
    with running_meter(spec.latency, trial_cpus=spec.resources.cpu, node=started.ray.node) as meter:
        task, lines = started.checked()  # the dry run went on while the meter started
        print(lines, file=out, end="", flush=True)
        with remembered_sigint() as interrupted:
            return _run(
                spec,
                opts,
                task,
                opts.workdir.resolve(),
                uri,
                t0,
                out,
                meter,
                trial_body,
                tune_callbacks,
                interrupted,
            )


def _run(
    spec: SearchSpec,
    opts: SearchOptions,
    task: Task,
    workdir: Path,
    uri: str,
    t0: float,
    out: TextIO,
    meter: MeterRef,
    trial_body: TrialBody,
    tune_callbacks: Sequence[Callback],
    interrupted: Callable[[], bool],
) -> SearchOutcome:
    client = MlflowClient(tracking_uri=uri)
    local_store = uri.startswith("sqlite:")
    exp_id = open_experiment(
        client, spec.experiment, artifact_root=workdir / "mlruns" if local_store else None
    )
    if local_store and ray_address(opts) is None:
        use_wal(uri)  # every writer is on this machine; see use_wal for what it saves
    if opts.resume:
        parent = resumable_search_run(client, exp_id, spec.experiment)
        reopen_run(client, client.get_run(parent))
    else:
        parent = start_search_run(client, exp_id, spec, config_path=opts.config_path)
    target = TrackingTarget(uri=uri, experiment_id=exp_id, parent_run_id=parent)
    watch = RecordsWatch(StoreIdentity.of(uri))  # the store the search's records go to
    runs_dir = workdir / ".slimtune" / "runs" / parent
    cache_dir = workdir / ".slimtune" / "cache"
    print(
        f"slimtune: experiment {spec.experiment!r}, search run {parent}, "
        f"tracking {redact_uri(uri)}",
        file=out,
    )
    try:
        if not (opts.resume and "baseline_accuracy" in client.get_run(parent).data.metrics):
            try:
                measure_baseline(
                    spec,
                    client,
                    parent,
                    task=task,
                    cache_dir=cache_dir,
                    runs_dir=runs_dir,
                    out=out,
                    meter=meter,
                )
            except SlimtuneError:
                raise
            except Exception as exc:
                raise BaselineFailed(
                    f"the dense baseline of task {spec.task!r} failed: {type(exc).__name__}: "
                    f"{exc}. Every trial is compared with it, so the search cannot start. "
                    f"Fix: run `slimtune validate` on the config and correct the task."
                ) from exc
        # int8_format: auto is timed by the search's meter, before any trial trains beside it
        # (the dense model is cached by now; the device matters only if its cache was lost).
        gpu = spec.resources.gpu > 0 and torch.cuda.is_available()
        device = "cuda" if gpu else "cpu"
        int8_auto = resolve_int8_format(
            spec, task, meter, cache_dir=cache_dir, device=device, out=out
        )
        # On the search run too: how the search chose its int8 format, or whether the named
        # one's kernels compute its math on the meter's CPU.
        named = check_named_int8_format(
            spec, task, meter, cache_dir=cache_dir, device=device, out=out
        )
        int8_tags = resolution_tags(int8_auto) if int8_auto else named.tags() if named else {}
        if int8_tags:
            client.log_batch(parent, tags=[RunTag(k, v) for k, v in int8_tags.items()])
        isolation = {"latency_isolation": meter.isolation, "latency_isolation_rule": meter.rule}
        client.log_batch(parent, tags=[RunTag(k, v) for k, v in isolation.items()])
        ctx = TrialContext(
            tracking=target,
            runs_dir=runs_dir,
            cache_dir=cache_dir,
            spec=measured_with(spec, meter),  # each trial's record: the mode that measured it
            baseline_threads=torch.get_num_threads(),  # the baseline was trained here, above
            latency_meter=meter,
            int8_auto=int8_auto,
        )
        if interrupted():  # a Ctrl-C Python dropped (e.g. inside a GC callback): act on it now
            raise KeyboardInterrupt
        account, stopper = run_tune(
            spec,
            ctx,
            runs_dir,
            out,
            resume=opts.resume,
            body=trial_body,
            extra_callbacks=tune_callbacks,
            watch=watch,
        )
        if stopper.triggered:
            raise SearchStopped(
                f"stopped early: the first {stopper.n} trials all failed "
                f"({stopper.common_reason()}). Fix that cause, then run the search again; "
                "`faults.stop_after_failures` sets how many failures in a row stop a search."
            )
        check_account(client, parent, spec.trials, account, watch)
        counts = account.counts
        finished, failed = counts.finished, counts.failed
        front = publish_front(uri, parent, out_dir=runs_dir / "report", backfill=True)
        wall = time.perf_counter() - t0
        log_metrics(
            client,
            parent,
            {
                "trials_finished": finished,
                "trials_failed": failed,
                "trials_stopped": counts.stopped,
                "trial_seconds_total": counts.seconds,
                "search_seconds": wall,
            },
        )
        client.set_terminated(parent, "FINISHED")
    except (KeyboardInterrupt, SearchInterrupted) as exc:
        raise end_interrupted(client, parent, spec.trials, opts.config_path, exc) from exc
    except RecordsLost:
        raise  # nothing can be written: the store is gone
    except BaseException as exc:
        end_failed(client, parent, f"{type(exc).__name__}: {exc}")
        if isinstance(exc, MlflowException | OSError):  # e.g. the store's disk is full
            raise records_unwritable(exc, uri) from exc
        raise
    stopped = f", {counts.stopped} stopped early" if spec.early_stopping.enabled else ""
    print(
        f"\n{finished} trials finished, {failed} failed{stopped} in {wall:.0f} s. Pareto front:",
        file=out,
    )
    if finished:
        print(pareto_table(front, table_knobs(spec.space.varying_knobs(), front)), file=out)
    print(
        cost_summary(front, cpu=spec.resources.cpu, gpu=spec.resources.gpu, wall_s=wall), file=out
    )
    inspect = "slimtune ui" if uri == resolve_tracking_uri(None, workdir) else redact_uri(uri)
    print(f"\nInspect: {inspect}   (then open the experiment {spec.experiment!r})", file=out)
    # MLflow 3 opens an experiment in its GenAI view; runs, tags and charts are under "Model
    # training", which this query selects.
    print(
        f"  e.g. http://127.0.0.1:5000/#/experiments/{exp_id}/runs?workflowType=machine_learning",
        file=out,
    )
    return SearchOutcome(uri, exp_id, parent, finished, failed, front, wall)


def measured_with(spec: SearchSpec, meter: MeterRef) -> SearchSpec:
    """``spec`` with ``latency.isolation`` the mode ``meter`` measures under (``auto``
    resolved): what each trial's record keeps."""
    latency = spec.latency.model_copy(update={"isolation": meter.isolation})
    return spec.model_copy(update={"latency": latency})
