"""publish_front against a real MLflow store, checked against an independent recomputation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from reports import publish_front

OBJECTIVES = [("accuracy", "maximize"), ("size_gzip_bytes", "minimize"), ("latency_ms", "minimize")]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def store(store_factory: Callable[[str], Any]) -> Any:
    return store_factory("publish")


def _expected_front(client: MlflowClient, store: Any, brute: Any) -> dict[str, bool]:
    """Recompute the front from the raw runs, without the reports package."""
    runs = client.search_runs(
        [store.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{store.parent_run_id}'",
        max_results=1000,
    )
    finished = [r for r in runs if r.info.status == "FINISHED"]
    values = [[r.data.metrics[m] for m, _ in OBJECTIVES] for r in finished]
    dominated = brute(values, [d for _, d in OBJECTIVES])
    return {r.info.run_id: not d for r, d in zip(finished, dominated, strict=True)}


def _pareto_tags(client: MlflowClient, store: Any) -> dict[str, str | None]:
    runs = client.search_runs(
        [store.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{store.parent_run_id}'"
    )
    return {r.info.run_id: r.data.tags.get("pareto") for r in runs}


def _tags(client: MlflowClient, store: Any) -> dict[str, tuple[str | None, str | None]]:
    runs = client.search_runs(
        [store.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{store.parent_run_id}'"
    )
    return {
        r.info.run_id: (r.data.tags.get("pareto"), r.data.tags.get("pareto_rank")) for r in runs
    }


def test_publish_front(
    store: Any, tmp_path: Path, brute_dominated: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = store.client
    out = tmp_path / "report"
    df = publish_front(store.uri, store.parent_run_id, out_dir=out)

    expected = _expected_front(client, store, brute_dominated)
    assert sum(expected.values()) == 9  # trials 9 and 10 are dominated; 3 and 4 are duplicates
    tags = _pareto_tags(client, store)
    assert tags.pop(store.failed_id) is None  # the FAILED run is not tagged at all
    assert tags == {run_id: ("true" if on else "false") for run_id, on in expected.items()}

    # The returned frame: every child, pareto False for the failed one.
    assert len(df) == len(store.data)
    assert df.set_index("run_id")["pareto"].to_dict() == {**expected, store.failed_id: False}

    # Artifacts and metric on the parent.
    names = {f.path for f in client.list_artifacts(store.parent_run_id)}
    assert {"pareto.csv", "accuracy_vs_size.png", "accuracy_vs_latency.png"} <= names
    for png in ("accuracy_vs_size.png", "accuracy_vs_latency.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    history = client.get_metric_history(store.parent_run_id, "pareto_size")
    assert [(m.value, m.step) for m in history] == [(9.0, len(store.data) - 1)]

    csv = pd.read_csv(out / "pareto.csv")
    assert list(csv.columns) == [
        "run_id",
        "trial_number",
        "lr",
        "batch_size",
        "sparsity",
        "bits",
        "format",  # the knobs that vary (no space recorded here: those whose values differ)
        "accuracy",
        "size_gzip_bytes",
        "latency_ms",
        "latency_converged",
        "pareto_group",
        "pareto_representative",
        "pareto_tied",
        "pareto_strict",
        "artifact",
    ]
    assert set(csv["run_id"]) == {r for r, on in expected.items() if on}
    assert csv["accuracy"].is_monotonic_decreasing  # sorted by the first objective, best first
    assert csv["trial_number"].iloc[0] == 0

    # Publishing again writes no tag: nothing changed.
    calls: list[str] = []
    original = MlflowClient.log_batch

    def spy(self: MlflowClient, run_id: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(run_id)
        return original(self, run_id, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", spy)
    publish_front(store.uri, store.parent_run_id, out_dir=out)
    assert calls == []


def test_publish_after_a_dominating_trial_rewrites_only_changed_tags(
    store: Any, tmp_path: Path, brute_dominated: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = store.client
    publish_front(store.uri, store.parent_run_id, out_dir=tmp_path / "first")
    run = client.create_run(
        store.experiment_id,
        tags={
            "mlflow.parentRunId": store.parent_run_id,
            "slimtune.role": "trial",
            "slimtune.trial_number": "99",
        },
    )
    metrics = {"accuracy": 0.99, "size_gzip_bytes": 25_000, "latency_ms": 1.02, "size_bytes": 1e5}
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()])
    client.set_terminated(run.info.run_id, "FINISHED")

    before = _tags(client, store)
    calls: list[str] = []
    original = MlflowClient.log_batch

    def spy(self: MlflowClient, run_id: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(run_id)
        return original(self, run_id, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", spy)
    publish_front(store.uri, store.parent_run_id, out_dir=tmp_path / "second")

    after = _pareto_tags(client, store)
    expected = _expected_front(client, store, brute_dominated)
    assert after == {
        **{r: ("true" if on else "false") for r, on in expected.items()},
        store.failed_id: None,
    }
    # Only children whose pareto or pareto_rank tag changed are written (the new trial pushes
    # some dominated trials one rank down), plus the parent's hypervolume/pareto_size point.
    now = _tags(client, store)
    changed = {r for r in now if now[r] != before.get(r)}
    assert set(calls) == changed | {store.parent_run_id}
    assert run.info.run_id in changed and after[run.info.run_id] == "true"
