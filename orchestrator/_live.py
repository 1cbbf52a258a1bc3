"""Live Pareto front in MLflow: after each finished trial, re-rank the trials and log hypervolume.

Runs in the Ray Tune driver (a Tune ``Callback``), so the child runs' tags and the parent's
``hypervolume``/``pareto_size`` history are written by one process, in order.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from orchestrator._tracking import log_metrics
from reports import update_front
from searchspace import SlimtuneError


class LiveFront:
    """Keep the front of a running search up to date in MLflow.

    ``update()`` calls :func:`reports.update_front` (tags ``pareto``/``pareto_rank`` rewritten
    where they changed, ``hypervolume`` and ``pareto_size`` logged at step = finished trials)
    and records how long it took. A failure to update is reported once on ``out`` and does not
    stop the search: the trials' own records are already safe, and the final
    ``publish_front`` recomputes everything.
    """

    def __init__(self, tracking_uri: str, parent_run_id: str, *, out: TextIO | None = None):
        self.tracking_uri = tracking_uri
        self.parent_run_id = parent_run_id
        self.out = out or sys.stderr
        self.seconds: list[float] = []
        self.errors = 0

    def update(self) -> None:
        start = time.perf_counter()
        try:
            update_front(self.tracking_uri, self.parent_run_id, backfill=True)
        except (SlimtuneError, MlflowException, OSError, ValueError) as exc:
            self.errors += 1
            if self.errors == 1:
                print(
                    f"slimtune: warning: live Pareto update failed ({exc}); the front is "
                    "recomputed when the search ends",
                    file=self.out,
                    flush=True,
                )
        self.seconds.append(time.perf_counter() - start)

    def log_cost(self) -> None:
        """Log on the parent what the live updates cost: ``live_update_ms_{mean,max}``."""
        if not self.seconds:
            return
        client = MlflowClient(tracking_uri=self.tracking_uri)
        log_metrics(
            client,
            self.parent_run_id,
            {
                "live_update_ms_mean": 1000 * sum(self.seconds) / len(self.seconds),
                "live_update_ms_max": 1000 * max(self.seconds),
                "live_updates": len(self.seconds),
            },
        )


class LiveFrontCallback(Callback):
    """A Ray Tune callback: :meth:`LiveFront.update` after each completed trial."""

    def __init__(self, tracking_uri: str, parent_run_id: str, *, out: TextIO | None = None):
        self.live = LiveFront(tracking_uri, parent_run_id, out=out)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.live.update()

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.live.log_cost()
