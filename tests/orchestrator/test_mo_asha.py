"""MO-ASHA's decisions replayed on recorded rung data, with no training (issue 13): the rule,
its tie-break, skip-dominated, the Ray scheduler's state across --resume, and how rung reports
reach the searcher, the stoppers and the trial counts."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from ray.tune import Result
from ray.tune.schedulers import TrialScheduler

from orchestrator._counts import TrialCounts
from orchestrator._mo_asha import MoAshaState, crowding, dominates, fronts, rank_order
from orchestrator._scheduler import (
    RUNG_KEY,
    STOPPED_KEY,
    FinalReportsOnly,
    MoAsha,
    SchedulerStateDamaged,
    rung_result,
)
from orchestrator._searcher import OptunaAskTell
from orchestrator._trainable import EndAtReport
from searchspace import SearchSpec
from trials import RungReport

OBJ: list[tuple[str, Any]] = [
    ("accuracy", "maximize"),
    ("size_gzip_bytes", "minimize"),
    ("latency_ms", "minimize"),
]
DIRS = [d for _, d in OBJ]

# Recorded rung reports (trial, epoch, accuracy, size, latency), in arrival order, as a
# 9-epoch search with min_epochs 1 and eta 3 (rungs 1 and 3) sees them.
RECORDED = [
    ("t0", 1, 0.80, 4000, 0.20),
    ("t1", 1, 0.60, 4200, 0.21),  # dominated by t0
    ("t2", 1, 0.70, 1500, 0.12),  # a trade-off with t0
    ("t0", 3, 0.90, 4000, 0.20),
    ("t3", 1, 0.50, 5000, 0.30),  # dominated by t0 and t2
    ("t2", 3, 0.85, 1500, 0.12),
    ("t4", 1, 0.95, 900, 0.10),  # dominates everything
    ("t5", 1, 0.40, 800, 0.09),  # a trade-off: the smallest
    ("t4", 3, 0.97, 900, 0.10),
]
# What the rule decides, by hand: at rung 1, t0 alone (keep 1); t1 (2 trials, keep 1) is
# dominated; t2 (3 trials, keep 1): t0 and t2 share front 0 with infinite crowding, t0 came
# first; t3 (4, keep 2): front 0 is {t0, t2}, t3 is behind; t4 (5, keep 2): alone in front 0;
# t5 (6, keep 2): front 0 is {t4, t5}, t4 arrived first, t5 second. At rung 3: t0 alone; t2
# (2, keep 1) is behind t0 by arrival; t4 (3, keep 1) dominates both.
EXPECTED_STOP = {
    ("t0", 1): False,
    ("t1", 1): True,
    ("t2", 1): True,
    ("t0", 3): False,
    ("t3", 1): True,
    ("t2", 3): True,
    ("t4", 1): False,
    ("t5", 1): False,
    ("t4", 3): False,
}


def _state(**overrides: Any) -> MoAshaState:
    values: dict[str, Any] = {"objectives": list(OBJ), "rungs": [1, 3], "eta": 3}
    values.update(overrides)
    return MoAshaState(**values)


def _metrics(acc: float, size: float, lat: float) -> dict[str, float]:
    return {"accuracy": acc, "size_gzip_bytes": size, "latency_ms": lat}


def test_pareto_helpers() -> None:
    assert dominates([0.9, 10, 1], [0.8, 10, 1], DIRS)
    assert not dominates([0.9, 10, 1], [0.9, 10, 1], DIRS)  # equal: no one dominates
    assert not dominates([0.9, 20, 1], [0.8, 10, 1], DIRS)  # a trade-off
    points = [[0.9, 10, 1], [0.8, 20, 2], [0.7, 5, 1], [0.6, 30, 3]]
    assert fronts(points, DIRS) == [[0, 2], [1], [3]]
    # The middle of a front has a finite crowding distance; its two ends are infinite.
    line = [[0.9, 100], [0.5, 10], [0.7, 50]]
    dist = crowding(line, [0, 1, 2])
    assert math.isinf(dist[0]) and math.isinf(dist[1]) and dist[2] == pytest.approx(2.0)
    assert rank_order(line, ["maximize", "minimize"]) == [0, 1, 2]


def test_decisions_on_recorded_rung_data() -> None:
    state = _state()
    got = {}
    for trial, epoch, acc, size, lat in RECORDED:
        decision = state.on_rung(trial, epoch, _metrics(acc, size, lat))
        assert decision is not None
        got[(trial, epoch)] = decision.stop
        assert f"rung epoch {epoch}" in decision.reason
    assert got == EXPECTED_STOP
    # Not a rung (epoch 2, and epoch 0 without skip_dominated): no decision, the trial goes on.
    assert state.on_rung("t4", 2, _metrics(0.96, 900, 0.1)) is None
    assert state.on_rung("t6", 0, _metrics(0.1, 900, 0.1)) is None


def test_ties_in_a_front_are_broken_by_crowding_distance() -> None:
    state = _state(objectives=[("accuracy", "maximize"), ("size_bytes", "minimize")], eta=2)
    go = [
        state.on_rung(t, 1, {"accuracy": a, "size_bytes": s})
        for t, a, s in [("a", 0.9, 100), ("b", 0.5, 10), ("c", 0.7, 50), ("d", 0.95, 120)]
    ]
    # a alone; b ties a (both ends of the front) and came second of 2 (keep 1); c is the
    # middle of a 3-point front (finite crowding) with keep 2: last; d, a new end: kept.
    assert [d.stop for d in go if d is not None] == [False, True, True, False]


def test_skip_dominated_uses_the_trials_own_optimistic_bound() -> None:
    state = _state(skip_dominated=True, skip_margin=0.02)
    final = {**_metrics(0.90, 1000, 0.10), "early_accuracy": 0.60}  # gained 0.30 by training
    state.on_final("f", final)
    # Untrained at 0.20: at best 0.20 + 0.30 + 0.02 = 0.52 < 0.90, larger and slower: stop.
    hopeless = state.on_rung("x", 0, _metrics(0.20, 2000, 0.2), val_samples=500)
    assert hopeless is not None and hopeless.stop
    assert "dominated by finished trial f" in hopeless.reason
    # Untrained at 0.70: 0.70 + 0.32 beats 0.90, so it could reach the front: it goes on.
    hopeful = state.on_rung("y", 0, _metrics(0.70, 2000, 0.2), val_samples=500)
    assert hopeful is not None and not hopeful.stop
    # Smaller than every finished trial: never dominated, whatever its accuracy.
    small = state.on_rung("z", 0, _metrics(0.05, 500, 0.2), val_samples=500)
    assert small is not None and not small.stop


def test_default_margin_is_two_standard_errors() -> None:
    state = _state(skip_dominated=True)
    state.on_final("f", _metrics(0.9, 1000, 0.1))
    assert state.margin(400) == pytest.approx(2 * math.sqrt(0.9 * 0.1 / 400))
    assert state.margin(10**7) == 0.01


def test_state_round_trips_through_json() -> None:
    state = _state(skip_dominated=True)
    for trial, epoch, acc, size, lat in RECORDED[:5]:
        state.on_rung(trial, epoch, _metrics(acc, size, lat))
    state.on_final("t0", _metrics(0.91, 4000, 0.2))
    again = MoAshaState.from_json(state.to_json())
    assert again == state


class _FakeTrial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def _tune_result(epoch: int, acc: float, size: float, lat: float) -> dict[str, Any]:
    report = RungReport(epoch=epoch, metrics=_metrics(acc, size, lat), val_samples=360, seconds=1.0)
    return rung_result(report, [m for m, _ in OBJ], "run")


def test_scheduler_resumes_from_its_saved_state(tmp_path: Path) -> None:
    """Ray Tune pickles the scheduler when a search starts and unpickles that copy on
    --resume: the copy reads the decisions made since from its JSON file."""
    path = tmp_path / "state.json"
    scheduler = MoAsha(_state(), path)
    started = pickle.dumps(scheduler)  # what Ray Tune saves as the search starts
    decisions = {}
    for trial, epoch, acc, size, lat in RECORDED[:4]:
        decisions[(trial, epoch)] = scheduler.on_trial_result(
            None, _FakeTrial(trial), _tune_result(epoch, acc, size, lat)
        )
    resumed: MoAsha = pickle.loads(started)  # the driver died; --resume restores this one
    for trial, epoch, acc, size, lat in RECORDED[4:]:
        decisions[(trial, epoch)] = resumed.on_trial_result(
            None, _FakeTrial(trial), _tune_result(epoch, acc, size, lat)
        )
    expected = {
        k: TrialScheduler.STOP if v else TrialScheduler.CONTINUE for k, v in EXPECTED_STOP.items()
    }
    assert decisions == expected
    assert resumed.stopped("t1") is not None and resumed.stopped("t0") is None
    # A trial re-run after the crash that reports the same rung again is not counted twice.
    again = resumed.on_trial_result(None, _FakeTrial("t4"), _tune_result(1, 0.95, 900, 0.1))
    assert again == TrialScheduler.CONTINUE
    assert len(resumed.state.records["1"]) == 6
    # A trial recorded as stopped before the crash, replayed, stays stopped.
    replay = {RUNG_KEY: 1, STOPPED_KEY: 1, "mlflow_run_id": "r"}
    assert resumed.on_trial_result(None, _FakeTrial("t1"), replay) == TrialScheduler.STOP
    # Final reports carry no rung key: not a decision.
    assert resumed.on_trial_result(None, _FakeTrial("t4"), _metrics(0.97, 900, 0.1)) == "CONTINUE"


def test_rung_reports_are_not_trials_to_stoppers_counts_and_searcher() -> None:
    rung = _tune_result(1, 0.8, 4000, 0.2)
    final = {**_metrics(0.9, 4000, 0.2), "trial_seconds": 5.0}
    assert EndAtReport()("t", rung) is False and EndAtReport()("t", final) is True

    class Counting(EndAtReport):
        seen = 0

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            Counting.seen += 1
            return False

    wrapped = FinalReportsOnly(Counting())
    assert wrapped("t", rung) is False and Counting.seen == 0
    wrapped("t", final)
    assert Counting.seen == 1

    results = [
        Result(metrics=final, checkpoint=None, error=None, path="/tmp/a"),
        Result(metrics={**rung, "rung_seconds": 2.0}, checkpoint=None, error=None, path="/tmp/b"),
        Result(metrics={}, checkpoint=None, error=None, path="/tmp/c"),
    ]
    counts = TrialCounts.of(results, [m for m, _ in OBJ])
    assert (counts.finished, counts.stopped, counts.failed) == (1, 1, 1)
    assert counts.seconds == pytest.approx(7.0)

    study = optuna.create_study(directions=DIRS)
    searcher = OptunaAskTell(
        study, {"lr": FloatDistribution(1e-4, 1e-2)}, [m for m, _ in OBJ], max_trials=2
    )
    searcher.suggest("a")
    searcher.suggest("b")
    searcher.on_trial_complete("a", rung)
    searcher.on_trial_complete("b", final)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.PRUNED, TrialState.COMPLETE]
    assert study.get_trials()[0].user_attrs["pruned_at_epoch"] == 1


def test_config_block_validates() -> None:
    spec = SearchSpec(
        experiment="x",
        task="digits",
        training={"epochs": 9},  # type: ignore[arg-type]
        early_stopping={"name": "mo-asha"},  # type: ignore[arg-type]
    )
    assert spec.early_stopping.rungs(9) == (1, 3)
    assert MoAshaState.for_spec(spec).rungs == [1, 3]
    assert SearchSpec(experiment="x", task="digits").early_stopping.enabled is False


def test_a_damaged_state_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"version": 1, "rungs": [1')
    scheduler = MoAsha(_state(), path)
    with pytest.raises(SchedulerStateDamaged, match="delete that file and resume again"):
        scheduler.on_trial_result(None, _FakeTrial("t0"), _tune_result(1, 0.8, 4000, 0.2))
