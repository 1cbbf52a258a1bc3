"""Ray Tune for one search: the Tuner (new, or restored by ``--resume``) with the Optuna searcher,
the MO-ASHA scheduler when early stopping is on, the stoppers and the callbacks; and the account
of its results (finished, failed, stopped early)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import optuna
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from ray.tune.logger import JsonLoggerCallback

from orchestrator._faults import FirstTrialsAllFail
from orchestrator._live import LiveFrontCallback
from orchestrator._mo_asha import MoAshaState
from orchestrator._progress import TrialLines
from orchestrator._records import RecordsWatch, SearchAccount, trial_runs
from orchestrator._samplers import build_sampler
from orchestrator._scheduler import (
    STATE_FILE,
    EarlyStopRecords,
    FinalReportsOnly,
    MoAsha,
    is_rung,
)
from orchestrator._searcher import TRIAL_NUMBER_KEY, OptunaAskTell
from orchestrator._state import default_storage, state_dir
from orchestrator._trainable import EndAtReport, TrialBody, TrialContext, make_trainable
from searchspace import SearchSpec, SlimtuneError, cover_points, to_distributions


class SearchStopped(SlimtuneError):
    """The search stopped on its own, e.g. because its first trials all failed."""


def run_tune(
    spec: SearchSpec,
    ctx: TrialContext,
    runs_dir: Path,
    out: TextIO,
    *,
    resume: bool,
    body: TrialBody,
    extra_callbacks: Sequence[Callback] = (),
    watch: RecordsWatch,
) -> tuple[SearchAccount, FirstTrialsAllFail]:
    from ray import tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        directions=spec.directions,
        sampler=build_sampler(spec.sampler),
        study_name=ctx.tracking.parent_run_id,
    )
    searcher = OptunaAskTell(
        study,
        to_distributions(spec.space),
        spec.metric_names,
        max_trials=spec.trials,
        cover=cover_points(spec.space, spec.sampler.cover),
    )
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    trainable = tune.with_resources(make_trainable(ctx, body=body), resources)
    stopper = FirstTrialsAllFail(spec.faults.stop_after_failures)
    scheduler = (
        MoAsha(MoAshaState.for_spec(spec), runs_dir / STATE_FILE)
        if spec.early_stopping.enabled
        else None
    )
    storage = spec.storage or default_storage(runs_dir.parent.parent.parent)
    name = f"search-{ctx.tracking.parent_run_id}"
    path = state_dir(storage, ctx.tracking.parent_run_id)
    if resume and not tune.Tuner.can_restore(path) and not _has_trials(ctx):
        # Interrupted before its first trial started (e.g. during the baseline): start them.
        print("slimtune: no trial had started; starting the search's trials", file=out)
        resume = False
    if resume:
        if not tune.Tuner.can_restore(path):
            raise SearchStopped(
                f"cannot resume: no saved search state at {path}. Fix: run without --resume "
                "(the state lives under .slimtune/ray/ of the directory the search ran in)."
            )
        # Finished trials stay finished; trials cut off by the crash run again, and find their
        # MLflow run by trial id (idempotent); the sampler's study comes back from its save().
        tuner = tune.Tuner.restore(
            str(path), trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        live = LiveFrontCallback(
            ctx.tracking.uri, ctx.tracking.parent_run_id, out=out, background=True
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                num_samples=spec.trials,
                max_concurrent_trials=spec.concurrency,
                reuse_actors=True,
                scheduler=scheduler,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                verbose=0,
                # FirstTrialsAllFail must see every result: CombinedStopper asks in order.
                # (it counts trials: rung reports of early stopping are not trials).
                stop=tune.stopper.CombinedStopper(FinalReportsOnly(stopper), watch, EndAtReport()),
                callbacks=[
                    # result.json per trial: what Ray Tune's own ResultGrid reads back.
                    JsonLoggerCallback(),
                    TrialLines(
                        spec.trials, out=out, knobs=spec.space.varying_knobs(), front=live.live
                    ),
                    live,
                    *([EarlyStopRecords(scheduler, ctx.tracking.uri)] if scheduler else []),
                    *extra_callbacks,
                ],
                failure_config=tune.FailureConfig(max_failures=spec.faults.max_retries),
                # early stopping: each trial's state at its last rung, for a retry to go on
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
    grid = tuner.fit()
    results = [grid[i] for i in range(len(grid))]
    if resume and len(results) < spec.trials:
        # The search ended short of its trials. Ray Tune consulted the stopper it restored, not
        # this one: apply the rule to the results, in trial order, to say why.
        # (FinalReportsOnly: the rule counts trials, a last report at a rung is none.)
        stopper.replay(
            r.metrics
            for r in sorted(results, key=_trial_number)
            if r.metrics is not None and not is_rung(r.metrics)
        )
    return SearchAccount.of(results, spec.metric_names, _stopped_ids(scheduler, results)), stopper


def _stopped_ids(scheduler: MoAsha | None, results: Sequence[Any]) -> frozenset[str]:
    """The trials among ``results`` that the early-stopping scheduler stopped. After --resume
    ``scheduler`` is not the one Ray Tune ran (it restored its own): it reads the decisions
    back from the state file, which the running one writes at every decision."""
    if scheduler is None:
        return frozenset()
    ids = (str((r.metrics or {}).get("trial_id", "")) for r in results)
    return frozenset(i for i in ids if i and scheduler.stopped(i) is not None)


def _has_trials(ctx: TrialContext) -> bool:
    return bool(trial_runs(MlflowClient(tracking_uri=ctx.tracking.uri), ctx.tracking.parent_run_id))


def _trial_number(result: Any) -> int:
    config = (result.metrics or {}).get("config") or {}
    return int(config.get(TRIAL_NUMBER_KEY, 1 << 30))
