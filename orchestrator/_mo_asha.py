"""Multi-objective ASHA's decisions, free of Ray: which trial goes on at a rung, which stops.

Kept apart from the Ray Tune scheduler (``orchestrator._scheduler``) so that its rule can be
replayed on recorded rung data with no training (tests/orchestrator/test_mo_asha.py), and its
state saved as JSON for ``--resume``.

The rule (Schmucker et al., "Multi-objective ASHA", 2021; asynchronous successive halving by
Li et al., 2020): a trial that reaches rung epoch ``r`` is ranked among every trial that has
reached ``r`` so far (itself included) by non-dominated sorting; within a front, by crowding
distance (NSGA-II: a trial in a sparse part of the front ranks higher), then by arrival. It
goes on when its place is within the first ``ceil(n / eta)`` of the ``n``; it never waits for
the rung to fill.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from searchspace import EarlyStopping, SearchSpec

ACCURACY = "accuracy"  # the one objective that moves while a trial fine-tunes
STATE_VERSION = 1


@dataclass(frozen=True)
class Decision:
    """What the scheduler decided for ``trial_id`` at ``epoch``; ``reason`` says why."""

    trial_id: str
    epoch: int
    stop: bool
    reason: str


@dataclass
class MoAshaState:
    """The rung records and decisions of one search (plain data, JSON round trip).

    ``objectives`` are (metric, direction) pairs; ``rungs`` the stopping epochs; ``eta`` the
    reduction factor. ``skip_dominated``/``skip_margin`` as in ``searchspace.EarlyStopping``.
    """

    objectives: list[tuple[str, Literal["maximize", "minimize"]]]
    rungs: list[int]
    eta: int
    skip_dominated: bool = False
    skip_margin: float | None = None
    # rung epoch (as str, for JSON) -> trial id -> objective values as reported
    records: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    # full-fidelity trials: trial id -> objective values; their gain over the early accuracy
    finished: dict[str, list[float]] = field(default_factory=dict)
    gains: dict[str, float] = field(default_factory=dict)
    best_accuracy: float | None = None
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def for_spec(cls, spec: SearchSpec) -> MoAshaState:
        stopping: EarlyStopping = spec.early_stopping
        return cls(
            objectives=[(o.metric, o.direction) for o in spec.objectives],
            rungs=list(stopping.rungs(spec.training.epochs)),
            eta=stopping.reduction_factor,
            skip_dominated=stopping.skip_dominated,
            skip_margin=stopping.skip_margin,
        )

    # ---- decisions -------------------------------------------------------------------------

    def on_rung(
        self, trial_id: str, epoch: int, metrics: Mapping[str, float], *, val_samples: int = 0
    ) -> Decision | None:
        """Record a rung report; return the decision at a rung (or, with ``skip_dominated``,
        at epoch 0), None at any other epoch (the trial goes on). A trial reporting the same
        rung again (re-run after a crash) replaces its record; its decision is made anew."""
        values = [float(metrics[m]) for m, _ in self.objectives]
        if ACCURACY in metrics:
            self._saw_accuracy(float(metrics[ACCURACY]))
        if epoch == 0:
            if not self.skip_dominated:
                return None
            return self._decide(self._skip(trial_id, metrics, val_samples))
        if epoch not in self.rungs:
            return None
        rung = self.records.setdefault(str(epoch), {})
        rung[trial_id] = values
        order = rank_order(list(rung.values()), [d for _, d in self.objectives])
        ids = list(rung)
        place = order.index(ids.index(trial_id))
        keep = max(1, math.ceil(len(rung) / self.eta))
        stop = place >= keep
        reason = (
            f"mo-asha: at rung epoch {epoch}, place {place + 1} of {len(rung)} trials (by "
            f"non-dominated rank, then crowding distance); the top {keep} (1/{self.eta}) go on"
        )
        return self._decide(Decision(trial_id, epoch, stop, reason))

    def on_final(self, trial_id: str, metrics: Mapping[str, float]) -> None:
        """A trial finished at full fidelity with these metrics (``early_accuracy`` too, when
        it measured first)."""
        try:
            values = [float(metrics[m]) for m, _ in self.objectives]
        except (KeyError, TypeError, ValueError):
            return
        if not all(math.isfinite(v) for v in values):
            return
        self.finished[trial_id] = values
        if ACCURACY in metrics:
            self._saw_accuracy(float(metrics[ACCURACY]))
            if "early_accuracy" in metrics:
                self.gains[trial_id] = float(metrics[ACCURACY]) - float(metrics["early_accuracy"])

    def decision(self, trial_id: str) -> Decision | None:
        d = self.decisions.get(trial_id)
        return Decision(**d) if d is not None else None

    def _decide(self, decision: Decision | None) -> Decision | None:
        if decision is not None:
            self.decisions[decision.trial_id] = asdict(decision)
        return decision

    def _saw_accuracy(self, accuracy: float) -> None:
        if math.isfinite(accuracy) and (
            self.best_accuracy is None or accuracy > self.best_accuracy
        ):
            self.best_accuracy = accuracy

    def _skip(self, trial_id: str, metrics: Mapping[str, float], val_samples: int) -> Decision:
        """Stop before training when even an optimistic accuracy leaves the trial dominated by
        a finished trial (given its measured size and latency).

        The optimistic accuracy is ``min(best + margin, early + gain + margin)``: ``best`` the
        best accuracy seen so far, ``early`` this trial's untrained accuracy, ``gain`` the
        largest accuracy a finished trial gained by fine-tuning. The first term alone never
        stops anything (a point with the best accuracy is never dominated), so the second,
        this trial's own bound, is what bites. ``margin``: ``skip_margin``, or two standard
        errors of ``best`` on the validation split (``2 * sqrt(p (1 - p) / n)``), at least 0.01.
        """
        go = Decision(trial_id, 0, False, "")
        if not self.finished or self.best_accuracy is None:
            return go
        margin = self.margin(val_samples)
        optimistic = self.best_accuracy + margin
        if self.gains and ACCURACY in metrics:
            optimistic = min(
                optimistic, float(metrics[ACCURACY]) + max(self.gains.values()) + margin
            )
        candidate = {**metrics, ACCURACY: optimistic}
        values = [float(candidate[m]) for m, _ in self.objectives]
        directions = [d for _, d in self.objectives]
        for other, theirs in self.finished.items():
            if dominates(theirs, values, directions):
                return Decision(
                    trial_id,
                    0,
                    True,
                    f"skip-dominated: with an optimistic accuracy of {optimistic:.4f} (margin "
                    f"{margin:.4f}) and its measured size and latency it is dominated by "
                    f"finished trial {other}",
                )
        return go

    def margin(self, val_samples: int) -> float:
        if self.skip_margin is not None:
            return self.skip_margin
        p = self.best_accuracy if self.best_accuracy is not None else 0.5
        p = min(max(p, 0.0), 1.0)
        se = math.sqrt(p * (1 - p) / val_samples) if val_samples > 0 else 0.0
        return max(0.01, 2 * se)

    # ---- persistence -----------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({"version": STATE_VERSION, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MoAshaState:
        data = json.loads(text)
        if data.pop("version", None) != STATE_VERSION:
            raise ValueError(f"mo-asha state must be version {STATE_VERSION}")
        data["objectives"] = [(m, d) for m, d in data["objectives"]]
        return cls(**data)


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """Whether ``a`` Pareto-dominates ``b``: no worse in every objective, better in one."""
    better = False
    for x, y, d in zip(a, b, directions, strict=True):
        x, y = (-x, -y) if d == "maximize" else (x, y)
        if x > y:
            return False
        better = better or x < y
    return better


def fronts(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[list[int]]:
    """Non-dominated sorting: indices of ``points`` by front (front 0 is non-dominated)."""
    left = list(range(len(points)))
    out: list[list[int]] = []
    while left:
        front = [
            i for i in left if not any(dominates(points[j], points[i], directions) for j in left)
        ]
        out.append(front)
        left = [i for i in left if i not in front]
    return out


def crowding(points: Sequence[Sequence[float]], front: Sequence[int]) -> dict[int, float]:
    """NSGA-II crowding distance of each index in ``front``: boundary points inf; else the sum
    over objectives of the gap between its neighbours, normalised by the front's range."""
    dist = {i: 0.0 for i in front}
    if len(front) <= 2:
        return {i: math.inf for i in front}
    for k in range(len(points[front[0]])):
        ordered = sorted(front, key=lambda i: points[i][k])
        low, high = points[ordered[0]][k], points[ordered[-1]][k]
        dist[ordered[0]] = dist[ordered[-1]] = math.inf
        if high == low:
            continue
        for prev, i, nxt in zip(ordered, ordered[1:], ordered[2:], strict=False):
            dist[i] += (points[nxt][k] - points[prev][k]) / (high - low)
    return dist


def rank_order(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of ``points`` best first: by front, then by crowding distance (larger first),
    then by index (earlier arrival first)."""
    order: list[int] = []
    for front in fronts(points, directions):
        dist = crowding(points, front)
        order.extend(sorted(front, key=lambda i: (-dist[i], i)))
    return order
