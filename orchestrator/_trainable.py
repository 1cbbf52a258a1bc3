"""The function Ray Tune runs for each trial: one thread, one trial, one MLflow child run.

Two kinds of failure are kept apart:
- an exception raised by the trial's own work (a NaN loss, a model that does not export, a
  claim its artifact does not show, a MemoryError, a bug in a task plugin) is the trial's
  *result*: its run ends FAILED with the reason, the sampler is told the trial failed, and Ray
  does not retry it (it would fail the same way);
- the loss of the process running it (a dead node, a worker killed by the OOM killer) never
  reaches this code: Ray sees the actor die and retries the trial up to ``faults.max_retries``
  times. The retry, and a re-run after ``--resume``, find the trial's run by its trial id and
  reuse it, so every trial has exactly one run. A failure to write to MLflow after training
  is raised too, and retried the same way.
"""

from __future__ import annotations

import functools
import math
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from orchestrator._searcher import TRIAL_NUMBER_KEY
from orchestrator._tracking import (
    TrackingTarget,
    fail_run,
    find_trial_run,
    finish_trial_run,
    start_trial_run,
)
from searchspace import SlimtuneError, TrialParams
from trials import Task, TrialSettings, load_task, run_trial

FAILED_KEY = "trial_failed"
ERROR_KEY = "trial_error"


class NonFiniteMetric(SlimtuneError):
    """A trial produced a NaN or infinite objective value."""


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs besides its knob values; plain data, pickled to the workers."""

    task_ref: str
    tracking: TrackingTarget
    runs_dir: Path
    cache_dir: Path
    epochs: int
    seed: int
    torch_threads: int
    latency_warmup: int
    latency_repeats: int
    latency_threads: int

    def settings(self, number: int) -> TrialSettings:
        work_dir = self.runs_dir / f"trial-{number:04d}"
        work_dir.mkdir(parents=True, exist_ok=True)
        return TrialSettings(
            epochs=self.epochs,
            seed=self.seed + number,
            cache_dir=self.cache_dir,
            work_dir=work_dir,
            latency_warmup=self.latency_warmup,
            latency_repeats=self.latency_repeats,
            latency_threads=self.latency_threads,
        )


@functools.lru_cache(maxsize=4)
def _task(ref: str) -> Task:
    # A reused actor keeps its task (and the data it loaded) from one trial to the next.
    return load_task(ref)


def make_trainable(ctx: TrialContext) -> Callable[[dict[str, Any]], None]:
    """Return the Ray Tune function trainable bound to ``ctx``."""

    def slimtune_trial(config: dict[str, Any]) -> None:
        import torch
        from ray import tune

        torch.set_num_threads(ctx.torch_threads)
        number = int(config[TRIAL_NUMBER_KEY])
        params = TrialParams.from_dict(config)
        trial_id = tune.get_context().get_trial_id() or f"trial-{number}"
        client = MlflowClient(tracking_uri=ctx.tracking.uri)
        existing = find_trial_run(client, ctx.tracking, trial_id, number)
        if (
            existing is not None
            and existing.info.status == "FINISHED"
            and not _same_params(existing, params)
        ):
            raise RuntimeError(  # a restored study never re-proposes a finished number otherwise
                f"trial number {number} is already recorded with other parameters "
                f"(run {existing.info.run_id}); the search state and MLflow disagree"
            )
        if existing is not None and existing.info.status == "FINISHED":
            # Finished before the driver went down (resume): report the record, do not re-run.
            tune.report(
                {
                    **existing.data.metrics,
                    "mlflow_run_id": existing.info.run_id,
                    "artifact": existing.data.tags.get("artifact", ""),
                    "replayed": 1,
                }
            )
            return
        settings = ctx.settings(number)
        if existing is not None:
            run_id = existing.info.run_id
            client.update_run(run_id, status="RUNNING")
            client.set_tag(run_id, "slimtune.attempts", _attempts(existing) + 1)
        else:
            run_id = start_trial_run(
                client,
                ctx.tracking,
                trial_id=trial_id,
                number=number,
                params=params,
                extra_params={"seed": settings.seed, "epochs": settings.epochs},
            )
        try:
            result = run_trial(_task(ctx.task_ref), params, settings)
            bad = {k: v for k, v in result.metrics.items() if not math.isfinite(v)}
            if bad:
                raise NonFiniteMetric(
                    f"trial {number} produced non-finite metrics {bad}; "
                    "lower the learning rate range (space.lr.high)"
                )
        except Exception as exc:  # the trial's own failure: recorded, told, never retried
            fail_run(
                client, run_id, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
            )
            tune.report(
                {
                    FAILED_KEY: 1,
                    ERROR_KEY: f"{type(exc).__name__}: {exc}"[:500],
                    "mlflow_run_id": run_id,
                }
            )
            return
        except BaseException as exc:
            reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
            fail_run(client, run_id, reason, status="KILLED" if _killed(exc) else "FAILED")
            raise
        finish_trial_run(
            client, run_id, metrics=result.metrics, tags=result.tags, onnx_path=result.onnx_path
        )
        tune.report(
            {
                **result.metrics,
                "mlflow_run_id": run_id,
                "artifact": result.tags.get("artifact", ""),
                "format": result.tags.get("format", ""),
            }
        )

    return slimtune_trial


def _same_params(run: Any, params: TrialParams) -> bool:
    logged = run.data.params
    return all(str(k) in logged and _close(logged[str(k)], v) for k, v in params.to_dict().items())


def _close(logged: str, value: Any) -> bool:
    if isinstance(value, float):
        try:
            return math.isclose(float(logged), value, rel_tol=1e-9)
        except ValueError:
            return False
    return logged == str(value)


def _attempts(run: Any) -> int:
    try:
        return int(run.data.tags.get("slimtune.attempts", "1"))
    except ValueError:
        return 1


def _killed(exc: BaseException) -> bool:
    return isinstance(exc, KeyboardInterrupt | SystemExit)
