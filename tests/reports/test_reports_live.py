"""update_front against a real MLflow store: ranks, hypervolume history, only changed tags."""

from __future__ import annotations

import dataclasses
import itertools
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from reports import (
    FrontTracker,
    hypervolume,
    load_search,
    publish_front,
    reference_point,
    update_front,
)

from .test_reports_hypervolume import brute_ranks

OBJECTIVES = [("accuracy", "maximize"), ("size_gzip_bytes", "minimize"), ("latency_ms", "minimize")]


@pytest.fixture(scope="module")
def pristine(store_factory: Callable[[str], Any]) -> Any:
    return store_factory("live")


@pytest.fixture
def store(pristine: Any, tmp_path: Path) -> Any:
    """A fresh copy of the tracking database (creating a store takes ~8 s; copying, ms).
    Artifacts stay in the pristine store's folder."""
    db = Path(pristine.uri.removeprefix("sqlite:///"))
    shutil.copyfile(db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return dataclasses.replace(pristine, uri=uri, client=MlflowClient(tracking_uri=uri))


def _children(client: MlflowClient, store: Any) -> list[Any]:
    return client.search_runs(
        [store.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{store.parent_run_id}'",
        max_results=1000,
    )


def _expected_ranks(client: MlflowClient, store: Any) -> dict[str, str]:
    finished = [r for r in _children(client, store) if r.info.status == "FINISHED"]
    values = np.array([[r.data.metrics[m] for m, _ in OBJECTIVES] for r in finished])
    ranks = brute_ranks(values, [d for _, d in OBJECTIVES])
    return {r.info.run_id: str(k) for r, k in zip(finished, ranks, strict=True)}


def _add_trial(client: MlflowClient, store: Any, number: int, metrics: dict[str, float]) -> str:
    run = client.create_run(
        store.experiment_id,
        tags={
            "mlflow.parentRunId": store.parent_run_id,
            "slimtune.role": "trial",
            "slimtune.trial_number": str(number),
        },
    )
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()])
    client.set_terminated(run.info.run_id, "FINISHED")
    return str(run.info.run_id)


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = MlflowClient.log_batch

    def spy(self: MlflowClient, run_id: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(run_id)
        return original(self, run_id, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", spy)
    return calls


def test_update_front_tags_ranks_and_logs_one_point_per_finished_trial(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = store.client
    up = update_front(store.uri, store.parent_run_id)
    n = len(store.data) - 1  # the last trial FAILED
    assert up.finished == n and up.steps_logged == list(range(1, n + 1))

    tags = {r.info.run_id: r.data.tags.get("pareto_rank") for r in _children(client, store)}
    assert tags.pop(store.failed_id) is None
    assert tags == _expected_ranks(client, store)
    pareto = {r.info.run_id: r.data.tags.get("pareto") for r in _children(client, store)}
    assert all((pareto[k] == "true") == (v == "0") for k, v in tags.items())

    hv = client.get_metric_history(store.parent_run_id, "hypervolume")
    steps = [m.step for m in sorted(hv, key=lambda m: m.step)]
    values = [m.value for m in sorted(hv, key=lambda m: m.step)]
    assert steps == list(range(1, n + 1))
    assert all(b >= a for a, b in itertools.pairwise(values))
    search = load_search(store.uri, store.experiment)
    ref = reference_point(search.baseline, OBJECTIVES)
    assert ref == {"accuracy": 0.0, "size_gzip_bytes": 880_000.0, "latency_ms": 4.8}
    assert values[-1] == pytest.approx(hypervolume(search.trials, OBJECTIVES, ref))
    assert up.hypervolume == pytest.approx(values[-1])
    sizes = client.get_metric_history(store.parent_run_id, "pareto_size")
    assert sorted(m.step for m in sizes) == steps
    assert max(sizes, key=lambda m: m.step).value == up.front_size == 9

    # Nothing new: nothing written, not even the parent's metrics.
    calls = _spy(monkeypatch)
    again = update_front(store.uri, store.parent_run_id)
    assert calls == [] and again.steps_logged == [] and again.tags_written == 0

    # A new dominating trial: one new point, and only the children whose tags changed.
    before = {r.info.run_id: dict(r.data.tags) for r in _children(client, store)}
    new = _add_trial(
        client, store, 99, {"accuracy": 0.99, "size_gzip_bytes": 25_000.0, "latency_ms": 1.0}
    )
    up3 = update_front(store.uri, store.parent_run_id)
    assert up3.steps_logged == [n + 1]
    after = {r.info.run_id: dict(r.data.tags) for r in _children(client, store)}
    changed = {
        r
        for r in after
        if r == new
        or (after[r].get("pareto"), after[r].get("pareto_rank"))
        != (before[r].get("pareto"), before[r].get("pareto_rank"))
    }
    assert set(calls) == changed | {store.parent_run_id}
    assert {r: t.get("pareto_rank") for r, t in after.items() if r != store.failed_id} == (
        _expected_ranks(client, store)
    )
    hv2 = client.get_metric_history(store.parent_run_id, "hypervolume")
    assert len(hv2) == n + 1 and max(hv2, key=lambda m: m.step).value >= values[-1]


def test_backfill_gives_a_point_per_trial_even_when_several_finish_at_once(store: Any) -> None:
    client = store.client
    update_front(store.uri, store.parent_run_id)
    n = len(store.data) - 1
    for i in range(3):
        _add_trial(
            client,
            store,
            100 + i,
            {"accuracy": 0.9 + i / 100, "size_gzip_bytes": 9_000.0 + i, "latency_ms": 0.9},
        )
    assert update_front(store.uri, store.parent_run_id).steps_logged == [n + 1, n + 2, n + 3]
    _add_trial(client, store, 200, {"accuracy": 0.5, "size_gzip_bytes": 1.0, "latency_ms": 9.0})
    _add_trial(client, store, 201, {"accuracy": 0.5, "size_gzip_bytes": 2.0, "latency_ms": 9.0})
    # Without backfill (publish_front at the end) only the current step is logged.
    assert update_front(store.uri, store.parent_run_id, backfill=False).steps_logged == [n + 5]


def test_publish_front_logs_hypervolume_plot_and_interactive_view(
    store: Any, tmp_path: Path
) -> None:
    publish_front(store.uri, store.parent_run_id, out_dir=tmp_path)
    names = {f.path for f in store.client.list_artifacts(store.parent_run_id)}
    assert {"hypervolume.png", "trials.html", "pareto.csv"} <= names
    assert (tmp_path / "hypervolume.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "trials.html").read_text()
    assert "plotly" in page.lower() and "<script src=" not in page
    # Hover text names every finished trial's run id.
    finished = [r for r in _children(store.client, store) if r.info.status == "FINISHED"]
    assert all(r.info.run_id in page for r in finished)
    assert store.failed_id not in page


def test_tracker_leaves_the_store_as_a_full_update_would(store: Any) -> None:
    client = store.client
    tracker = FrontTracker(store.uri, store.parent_run_id)
    n = len(store.data) - 1
    first = tracker.update()
    assert first.steps_logged == list(range(1, n + 1)) and tracker.last_fetched == len(store.data)
    metrics = [
        {"accuracy": 0.99, "size_gzip_bytes": 25_000.0, "latency_ms": 1.0},  # dominates most
        {"accuracy": 0.5, "size_gzip_bytes": 90_000.0, "latency_ms": 9.0},  # dominated
        {"accuracy": 0.995, "size_gzip_bytes": 20_000.0, "latency_ms": 0.9},  # new best
    ]
    for i, m in enumerate(metrics):
        before = {r.info.run_id: dict(r.data.tags) for r in _children(client, store)}
        new = _add_trial(client, store, 300 + i, m)
        up = tracker.update([new])
        assert up.steps_logged == [n + 1 + i] and tracker.last_fetched == 1
        after = {r.info.run_id: dict(r.data.tags) for r in _children(client, store)}
        changed = [
            r
            for r in after
            if r == new
            or (after[r].get("pareto"), after[r].get("pareto_rank"))
            != (before[r].get("pareto"), before[r].get("pareto_rank"))
        ]
        # Only what changed was written: the runs it did not re-read had their ranks compared
        # with the tags it remembers writing.
        assert up.tags_written == len(changed)
    assert tracker.update().steps_logged == [] and tracker.last_fetched == 0  # nothing new
    # A full re-read finds every tag and every point already right.
    full = update_front(store.uri, store.parent_run_id)
    assert full.tags_written == 0 and full.steps_logged == []
    ranks = {r.info.run_id: r.data.tags.get("pareto_rank") for r in _children(client, store)}
    ranks.pop(store.failed_id)
    assert ranks == _expected_ranks(client, store)
    steps = sorted(m.step for m in client.get_metric_history(store.parent_run_id, "hypervolume"))
    assert steps == list(range(1, n + len(metrics) + 1))


def test_tracker_reads_only_child_runs_of_its_search(store: Any) -> None:
    tracker = FrontTracker(store.uri, store.parent_run_id)
    tracker.update()
    other = store.client.create_run(store.experiment_id).info.run_id  # not a child of it
    up = tracker.update([other, store.child_ids[0], store.child_ids[0]])
    assert tracker.last_fetched == 1 and up.steps_logged == [] and up.tags_written == 0
