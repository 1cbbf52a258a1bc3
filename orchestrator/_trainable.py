"""The function Ray Tune runs for each trial: one thread, one trial, one MLflow child run.

Two kinds of failure are kept apart:
- an exception raised by the trial's own work (a NaN loss, a model that does not export, a
  claim its artifact does not show, a MemoryError, a bug in a task plugin) is the trial's
  *result*: its run ends FAILED with the reason, the sampler is told the trial failed, and Ray
  does not retry it (it would fail the same way);
- the loss of the process running it (a dead node, a worker killed by the OOM killer) never
  reaches this code: Ray sees the actor die and retries the trial up to ``faults.max_retries``
  times. The retry, and a re-run after ``--resume``, find the trial's run by its trial id and
  reuse it, so every trial has exactly one run. With early stopping, a trial saves its state
  at each rung of the scheduler (a Ray Tune checkpoint in the search's storage), and the retry
  goes on from the last rung it passed (``trials._rung_state``; tag ``resumed_at_epoch``).
A failure before the trial's run exists (a config that is no TrialParams) or while writing its
result (a full disk) is the trial's own too: a FAILED run with the reason, reported once.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from ray.tune import Checkpoint, Stopper

from orchestrator._counts import ERROR_KEY, FAILED_KEY
from orchestrator._isolation import cores_text
from orchestrator._latency import LatencyMeterUnavailable, MeterRef
from orchestrator._replay import RecordDisagrees, finished_replay, stopped_replay
from orchestrator._rungs import RungReports, StoppedAtRung, resume_state
from orchestrator._scheduler import STOPPED_TAG, is_rung
from orchestrator._searcher import TRIAL_NUMBER_KEY
from orchestrator._tracking import (
    TrackingTarget,
    fail_run,
    find_trial_run,
    finish_trial_run,
    reopen_run,
    start_failed_trial_run,
    start_trial_run,
)
from searchspace import SearchSpec, SlimtuneError, TrialParams
from trials import (
    Int8Resolution,
    RungReporter,
    RungState,
    Task,
    TrialRecord,
    TrialResult,
    TrialSettings,
    load_task,
    run_trial,
)


class NonFiniteMetric(SlimtuneError):
    """A trial produced a NaN or infinite objective value."""


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs besides its knob values; plain data, pickled to the workers.

    ``spec`` (the search's validated config) and ``baseline_threads`` (the torch thread count of
    the driver, which trains the dense baseline) go into each trial's rebuild record.
    ``latency_meter`` says where the trial's latency is measured (``orchestrator._latency``);
    ``None``: in the trial's process, with no coordination. ``int8_auto``: the search's
    resolution of ``int8_format: auto`` (``orchestrator._int8``), None when it made none.
    """

    tracking: TrackingTarget
    runs_dir: Path
    cache_dir: Path
    spec: SearchSpec
    baseline_threads: int
    latency_meter: MeterRef | None = None
    int8_auto: Int8Resolution | None = None

    def settings(self, number: int) -> TrialSettings:
        """Trial ``number`` seeds its own randomness with ``seed + number`` and compresses the
        search's one dense baseline (``baseline_seed=seed``)."""
        work_dir = self.runs_dir / f"trial-{number:04d}"
        work_dir.mkdir(parents=True, exist_ok=True)
        return TrialSettings.for_search(
            self.spec,
            seed=self.spec.seed + number,
            baseline_seed=self.spec.seed,
            cache_dir=self.cache_dir,
            work_dir=work_dir,
            device=self.device,
            int8_auto=self.int8_auto,
        )

    @property
    def task_ref(self) -> str:
        return self.spec.task

    @property
    def torch_threads(self) -> int:
        """Torch threads of a trial: the CPUs it reserves (at least one)."""
        return max(1, int(self.spec.resources.cpu))

    @property
    def device(self) -> str:
        """Where trials train: ``"cuda"`` when each reserves GPUs (Ray makes the GPUs it gives
        a trial, whole or a fraction, the only ones its process sees), else ``"cpu"``."""
        return "cuda" if self.spec.resources.gpu > 0 else "cpu"


# Trials this worker process has run (1 for its first): with reused actors, CUDA's set-up and
# the task's data are paid by index 1 only (see trials._device).
_trials_in_process = itertools.count(1)


@functools.lru_cache(maxsize=4)
def _task(ref: str) -> Task:
    # A reused actor keeps its task (and the data it loaded) from one trial to the next.
    return load_task(ref)


class EndAtReport(Stopper):
    """Stop each trial at its final report: the trial function reports once, at its very end
    (with early stopping it also reports at its rungs, which this lets pass).

    Without it Ray Tune asks the function for a next result after that report, and learns only
    one more driver round trip later that it returned: ~2 round trips per trial instead of 1
    (benchmarks/BENCHMARKS.md). Stopping at a report ends the function inside ``tune.report``
    (a clean ``SystemExit(0)`` that Ray expects), which is harmless: nothing follows it.

    A saved search's tuner state pickles it by its module path: keep it in this module, or
    ``--resume`` of the searches saved before a move cannot load their state.
    """

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return not is_rung(result)

    def stop_all(self) -> bool:
        return False


TrialBody = Callable[[Task, TrialParams, TrialSettings], TrialResult]
"""What a trial does inside its MLflow run: :func:`trials.run_trial` in every search.

A seam, not a switch: ``benchmarks/orchestration_overhead.py`` passes a fixed-cost workload here
to measure the orchestration around it (Ray Tune, the searcher, MLflow, the live front)."""


def make_trainable(
    ctx: TrialContext, *, body: TrialBody = run_trial
) -> Callable[[dict[str, Any]], None]:
    """Return the Ray Tune function trainable bound to ``ctx``; each trial runs ``body``.

    The function calls ``tune.report`` once at its end, when the trial's work and its MLflow run
    are done (or its failure is recorded), and with early stopping also at each rung: run it
    with :class:`EndAtReport`.
    """

    def slimtune_trial(config: dict[str, Any]) -> None:
        import torch
        from ray import tune

        if ctx.latency_meter is not None:
            # isolation: cores: off the meter's cores, at each trial (a reused worker stays
            # off); the trial keeps its CPUs' worth of torch threads (its record says so)
            ctx.latency_meter.pin_trial()
        torch.set_num_threads(ctx.torch_threads)
        trial_id = tune.get_context().get_trial_id() or f"trial-{config.get(TRIAL_NUMBER_KEY)}"
        run_trial_in_mlflow(
            ctx,
            config,
            trial_id,
            body=body,
            report=tune.report,
            checkpoint=tune.get_checkpoint(),  # a retry's: its last rung
        )

    return slimtune_trial


Report = Callable[[dict[str, Any]], None]


def run_trial_in_mlflow(
    ctx: TrialContext,
    config: dict[str, Any],
    trial_id: str,
    *,
    body: TrialBody = run_trial,
    report: Report,
    checkpoint: Checkpoint | None = None,
) -> None:
    """Run one trial inside its MLflow child run and ``report`` its outcome once (to Ray Tune
    in a search: ``tune.report``); with early stopping, its rungs too (``RungReports``), and
    a stop at a rung ends the trial with the ``SystemExit`` Ray expects, its run left to the
    driver (``EarlyStopRecords``).

    Whatever fails, at whatever stage (a config that is no TrialParams, a lookup in MLflow,
    the trial's work, writing its result to a full disk), the trial's run ends FAILED with the
    reason in ``slimtune.error`` and the failure is *reported*, not raised: Ray does not retry
    what would fail the same way. A run that cannot be written at all (the store is gone) is
    left to the driver, which closes it or fails the search (``orchestrator._records``).

    ``checkpoint``: the state the trial saved at its last rung before it was lost; the trial
    goes on from there (a state that is unreadable or not this trial's is ignored, tag
    ``resume_refused``).
    """
    client = MlflowClient(tracking_uri=ctx.tracking.uri)
    run_id: str | None = None
    try:
        number = int(config[TRIAL_NUMBER_KEY])
        params = TrialParams.from_dict(config)
        existing = find_trial_run(client, ctx.tracking, trial_id, number)
        run_id = existing.info.run_id if existing is not None else None
        if existing is not None and existing.data.tags.get(STOPPED_TAG) == "true":
            # Stopped early before the driver went down (resume): it stays stopped.
            report(stopped_replay(existing))
            return
        if existing is not None and existing.info.status == "FINISHED":
            report(finished_replay(existing, params, number))
            return
        settings = ctx.settings(number)
        if existing is not None:
            reopen_run(client, existing)
            client.set_tag(existing.info.run_id, "slimtune.attempts", _attempts(existing) + 1)
        else:
            run_id = start_trial_run(
                client,
                ctx.tracking,
                trial_id=trial_id,
                number=number,
                params=params,
                extra_params={"seed": settings.seed, "epochs": settings.epochs},
            )
    except RecordDisagrees:
        raise  # Ray retries it, then ends it with an error: counted as failed, run unchanged
    except Exception as exc:  # before the trial's run is open: still a FAILED run, reported
        _report_failure(client, ctx.tracking, run_id, trial_id, config, exc, report)
        return
    assert run_id is not None  # set on every path that reaches here
    early = ctx.spec.early_stopping
    rungs = None
    if early.enabled:
        save_at = frozenset(early.rungs(settings.epochs))
        rungs = RungReports(client, run_id, ctx.spec.metric_names, report, save_at=save_at)
    try:
        resume = resume_state(client, run_id, checkpoint, params, settings)
        task = _task(ctx.task_ref)
        result = _run_body(body, ctx.latency_meter, task, params, settings, rungs, resume)
        bad = {k: v for k, v in result.metrics.items() if not math.isfinite(v)}
        if bad:
            raise NonFiniteMetric(
                f"trial {number} produced non-finite metrics {bad}; "
                "lower the learning rate range (space.lr.high)"
            )
        record = TrialRecord.of(
            ctx.spec,
            number,
            params,
            settings,
            result,
            torch_threads=ctx.torch_threads,
            baseline_threads=ctx.baseline_threads,
        )
        # Inside the try: a storage error writing the result (a full disk) is the trial's
        # failure, recorded once; a retry would train again and fail the same way.
        finish_trial_run(
            client,
            run_id,
            metrics={**result.metrics, "worker_trial_index": float(next(_trials_in_process))},
            tags={
                **result.tags,
                "worker_pid": str(os.getpid()),
                "worker_cores": cores_text(os.sched_getaffinity(0)),
            },
            onnx_path=result.onnx_path,
            record_json=record.to_json(),
        )
    except StoppedAtRung:  # the search's scheduler stopped it; the driver records it
        # (EarlyStopRecords): end the thread at once, so that Ray can reuse this actor
        raise SystemExit(0) from None  # how Ray ends a trial it stops, as tune.report did
    except LatencyMeterUnavailable as exc:  # the infrastructure's: Ray retries the trial
        fail_run(client, run_id, f"{type(exc).__name__}: {exc}")
        raise
    except Exception as exc:  # the trial's own failure: recorded, told, never retried
        _report_failure(client, ctx.tracking, run_id, trial_id, config, exc, report)
        return
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
        fail_run(client, run_id, reason, status="KILLED" if _killed(exc) else "FAILED")
        raise
    report(
        {
            **result.metrics,
            "mlflow_run_id": run_id,
            "artifact": result.tags.get("artifact", ""),
            "format": result.tags.get("format", ""),
            "latency_converged": result.tags.get("latency_converged", ""),
        }
    )


def _report_failure(
    client: MlflowClient,
    target: TrackingTarget,
    run_id: str | None,
    trial_id: str,
    config: dict[str, Any],
    exc: Exception,
    report: Report,
) -> None:
    """End the trial's run FAILED with the reason (opening one if it has none yet) and report
    the failure. When MLflow cannot be written either, the report says so too."""
    reason = f"{type(exc).__name__}: {exc}"
    try:
        if run_id is None:
            run_id = start_failed_trial_run(client, target, trial_id=trial_id, config=config)
        fail_run(client, run_id, f"{reason}\n{traceback.format_exc(limit=8)}")
    except Exception as record_exc:
        reason += f" (and recording it in MLflow failed: {type(record_exc).__name__}: {record_exc})"
    report({FAILED_KEY: 1, ERROR_KEY: reason[:500], "mlflow_run_id": run_id or ""})


def _run_body(
    body: TrialBody,
    meter_ref: MeterRef | None,
    task: Task,
    params: TrialParams,
    settings: TrialSettings,
    rungs: RungReporter | None = None,
    resume: RungState | None = None,
) -> TrialResult:
    """Run ``trials.run_trial`` inside this machine's measurement gate, its latency timed by
    the search's meter, reporting to ``rungs`` with early stopping (going on from ``resume``,
    a rung state). Any other body (the orchestration benchmark's fixed work) measures no
    latency and runs as it is."""
    if body is not run_trial:
        return body(task, params, settings)
    if meter_ref is None:
        return run_trial(task, params, settings, rungs=rungs, resume=resume)
    meter = meter_ref.connect()
    with meter.working():
        return run_trial(task, params, settings, meter=meter, rungs=rungs, resume=resume)


def _attempts(run: Any) -> int:
    try:
        return int(run.data.tags.get("slimtune.attempts", "1"))
    except ValueError:
        return 1


def _killed(exc: BaseException) -> bool:
    return isinstance(exc, KeyboardInterrupt | SystemExit)
