"""The function Ray Tune runs for each trial: one thread, one trial, one MLflow child run."""

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
from orchestrator._tracking import TrackingTarget, fail_run, finish_trial_run, start_trial_run
from searchspace import SlimtuneError, TrialParams
from trials import Task, TrialSettings, load_task, run_trial


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
        settings = ctx.settings(number)
        client = MlflowClient(tracking_uri=ctx.tracking.uri)
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
            finish_trial_run(
                client,
                run_id,
                metrics=result.metrics,
                tags=result.tags,
                onnx_path=result.onnx_path,
            )
        except BaseException as exc:
            reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
            fail_run(client, run_id, reason, status="KILLED" if _killed(exc) else "FAILED")
            raise
        tune.report(
            {
                **result.metrics,
                "mlflow_run_id": run_id,
                "artifact": result.tags.get("artifact", ""),
                "format": result.tags.get("format", ""),
            }
        )

    return slimtune_trial


def _killed(exc: BaseException) -> bool:
    return isinstance(exc, KeyboardInterrupt | SystemExit)
