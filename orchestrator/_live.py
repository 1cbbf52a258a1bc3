"""Live Pareto front in MLflow: after each finished trial, re-rank the trials and log hypervolume.

Runs in the Ray Tune driver (a Tune ``Callback``), so the child runs' tags and the parent's
``hypervolume``/``pareto_size`` history are written by one process, in order. A search runs the
updates in a thread of their own (``background=True``): Ray Tune starts the next trial only after
every callback returned, and an update takes 30-100 ms (more as the search grows), so they are
also spaced to use at most 2 % of a core.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback, Stopper

from orchestrator._tracking import log_metrics
from reports import FrontTracker
from searchspace import SlimtuneError

# A search's background updates: each waits this long after a trial finished (for Ray Tune to
# start the next trial first), and together they use at most this share of one core (the driver
# shares the cores with the trials).
BACKGROUND_DELAY_S = 0.2
BACKGROUND_MAX_SHARE = 0.02


class LiveFront:
    """Keep the front of a running search up to date in MLflow.

    ``update()`` brings the front up to date through a :class:`reports.FrontTracker` (tags
    ``pareto``/``pareto_rank`` rewritten where they changed, ``hypervolume`` and
    ``pareto_size`` logged at step = finished trials; each update reads only the runs that
    ended since the last one) and records how long it took. A failure to update is reported
    once on ``out`` and does not stop the search: the trials' own records are already safe,
    and the final ``publish_front`` recomputes everything.
    """

    def __init__(self, tracking_uri: str, parent_run_id: str, *, out: TextIO | None = None):
        self.tracking_uri = tracking_uri
        self.parent_run_id = parent_run_id
        self.out = out or sys.stderr
        self.seconds: list[float] = []
        self.errors = 0
        # The front as of the last successful update (the progress line shows them).
        self.front_size: int | None = None
        self.hypervolume: float | None = None
        self.front_trials: int | None = None  # the finished trials that front ranks
        self._tracker: FrontTracker | None = None  # made at the first update, in the driver
        self._ended: set[str] = set()
        self._lock = threading.Lock()

    def ended(self, run_id: str) -> None:
        """The trial of child run ``run_id`` ended: the next update reads that run."""
        with self._lock:
            self._ended.add(run_id)

    def update(self) -> None:
        start = time.perf_counter()
        with self._lock:
            ended, self._ended = self._ended, set()
        try:
            if self._tracker is None:
                self._tracker = FrontTracker(self.tracking_uri, self.parent_run_id)
            done = self._tracker.update(ended, backfill=True)
            self.front_size, self.hypervolume = done.front_size, done.hypervolume
            self.front_trials = done.finished
        except (SlimtuneError, MlflowException, OSError, ValueError) as exc:
            with self._lock:  # not read yet: the next update reads them
                self._ended |= ended
            self.errors += 1
            if self.errors == 1:
                print(
                    f"slimtune: warning: live Pareto update failed ({exc}); the front is "
                    "recomputed when the search ends",
                    file=self.out,
                    flush=True,
                )
        self.seconds.append(time.perf_counter() - start)

    def __getstate__(self) -> dict[str, Any]:
        # The tracker's MLflow client and the lock stay in their process.
        return {**self.__dict__, "_tracker": None, "_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A search resumed from an older slimtune's saved state lacks the newer attributes.
        defaults: dict[str, Any] = {
            "_tracker": None,
            "_ended": set(),
            "seconds": [],
            "errors": 0,
            "front_size": None,
            "hypervolume": None,
            "front_trials": None,
        }
        self.__dict__.update({**defaults, **state, "_lock": threading.Lock()})

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


class Coalesced:
    """Run ``fn`` in one daemon thread when requested; requests that arrive before a run starts,
    or while it runs, are served together by one next run (a live update covers every trial
    finished so far, so nothing is lost).

    A run starts ``delay_s`` after its request at the earliest, and late enough that ``fn`` runs
    at most ``max_share`` of the time: after a run of d seconds the next waits d/max_share - d.
    ``close()`` serves a pending request at once, then ends the thread.
    """

    def __init__(
        self,
        fn: Callable[[], None],
        *,
        name: str,
        delay_s: float = 0.0,
        max_share: float = 1.0,
    ) -> None:
        if not (delay_s >= 0 and 0 < max_share <= 1):
            raise ValueError(
                f"`delay_s >= 0` and `0 < max_share <= 1` must hold, but got "
                f"(delay_s={delay_s}, max_share={max_share})"
            )
        self._fn = fn
        self._delay_s = delay_s
        self._max_share = max_share
        self._wake = threading.Condition()
        self._pending = False
        self._closed = False
        self._not_before = 0.0
        self.runs = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def request(self) -> None:
        with self._wake:
            self._pending = True
            self._wake.notify()

    def close(self, *, timeout_s: float | None = None) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout_s)

    def _loop(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._pending or self._closed)
                if not self._pending:
                    return
                wait = max(self._delay_s, self._not_before - time.monotonic())
                self._wake.wait_for(lambda: self._closed, timeout=wait)
                self._pending = False
            start = time.monotonic()
            try:
                self._fn()
            finally:
                took = time.monotonic() - start
                self._not_before = time.monotonic() + took * (1 / self._max_share - 1)
                self.runs += 1


class LiveFrontCallback(Callback):
    """A Ray Tune callback: :meth:`LiveFront.update` after each completed trial.

    With ``background=True`` the updates run in a :class:`Coalesced` thread, off the Tune loop,
    using at most ``BACKGROUND_MAX_SHARE`` of a core: trials that finish close together get one
    update (the hypervolume history is backfilled, a point per trial all the same), and the end
    of the experiment waits for the last one. The thread starts when the experiment does (the
    Tuner pickles its callbacks when it is made, and a thread does not pickle) with a first
    update: it reads the runs recorded so far and pays the first query's set-up (~0.3-0.4 s)
    while Ray starts the trials' workers, instead of at the first finished trial, where it held
    the driver's GIL while Ray Tune handled the next result.
    """

    def __init__(
        self,
        tracking_uri: str,
        parent_run_id: str,
        *,
        out: TextIO | None = None,
        background: bool = False,
    ):
        self.live = LiveFront(tracking_uri, parent_run_id, out=out)
        self.background = background
        self._updates: Coalesced | None = None

    def setup(
        self,
        stop: Stopper | None = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        if self.background:
            self._background().request()

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        run_id = (getattr(trial, "last_result", None) or {}).get("mlflow_run_id")
        if run_id:
            self.live.ended(str(run_id))
        if not self.background:
            self.live.update()
            return
        self._background().request()

    def _background(self) -> Coalesced:
        if self._updates is None:
            self._updates = Coalesced(
                self.live.update,
                name="slimtune-live-front",
                delay_s=BACKGROUND_DELAY_S,
                max_share=BACKGROUND_MAX_SHARE,
            )
        return self._updates

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        if self._updates is not None:
            self._updates.close()
            self._updates = None
        self.live.log_cost()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_updates": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # `--resume` restores callbacks from the search's saved state, perhaps written by an
        # older slimtune whose callback had fewer attributes: those get today's defaults.
        self.__dict__.update({"background": True, "_updates": None, **state})
