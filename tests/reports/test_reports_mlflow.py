"""load_search, download_model and their errors against a real MLflow SQLite store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from reports import (
    Constraints,
    ReportError,
    SearchNotFound,
    SearchRuns,
    download_model,
    load_search,
    select,
)


def test_load_search_reads_the_newest_search(search_store: Any) -> None:
    s = search_store
    search = load_search(s.uri, s.experiment)
    assert isinstance(search, SearchRuns)
    assert search.parent_run_id == s.parent_run_id  # not the older search
    assert search.experiment_id == s.experiment_id
    assert search.objectives == [
        ("accuracy", "maximize"),
        ("size_gzip_bytes", "minimize"),
        ("latency_ms", "minimize"),
    ]
    assert search.baseline == {k.removeprefix("baseline_"): v for k, v in s.baseline.items()}

    df = search.trials
    assert len(df) == len(s.data)
    assert df["run_id"].tolist() == s.child_ids  # sorted by trial_number
    assert df["trial_number"].tolist() == list(range(len(s.data)))
    assert df["trial_id"].tolist()[:2] == ["t0000", "t0001"]
    for column, dtype in {
        "trial_number": "int64",
        "batch_size": "int64",
        "bits": "int64",
        "lr": "float64",
        "sparsity": "float64",
        "accuracy": "float64",
        "size_bytes": "float64",
        "size_gzip_bytes": "float64",
        "latency_ms": "float64",
        "latency_p90_ms": "float64",
        "train_seconds": "float64",  # an extra metric
    }.items():
        assert df[column].dtype == np.dtype(dtype), column
    row = df.iloc[3]
    lr, batch, sparsity, bits, acc, size, _gz, lat = s.data[3]
    assert (row["lr"], row["batch_size"], row["sparsity"], row["bits"]) == (
        lr,
        batch,
        sparsity,
        bits,
    )
    assert (row["accuracy"], row["size_bytes"], row["latency_ms"]) == (acc, size, lat)
    assert row["artifact"] == "simulated" and row["format"] == "int4"
    assert df["status"].value_counts().to_dict() == {"FINISHED": len(s.data) - 1, "FAILED": 1}
    failed = df[df["run_id"] == s.failed_id].iloc[0]
    assert failed["status"] == "FAILED"
    assert failed["error"] == "RuntimeError: export failed"
    assert failed["accuracy"] == s.data[-1][4]
    assert "pareto" not in df.columns  # nobody published a front in this store


def test_select_on_a_loaded_search_skips_the_failed_trial(search_store: Any) -> None:
    trials = load_search(search_store.uri, search_store.experiment).trials
    # The FAILED trial (accuracy 0.999, 0.5 ms) would win if it were considered.
    sel = select(trials, Constraints(max_latency_ms=1.1))
    assert sel.chosen["trial_number"] == 1
    assert sel.runners_up["trial_number"].tolist() == [8, 2]
    assert sel.considered == len(search_store.data) - 1


def test_load_search_pages_through_children(
    search_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    original = MlflowClient.search_runs

    def spy(self: MlflowClient, *args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "search_runs", spy)
    search = load_search(search_store.uri, search_store.experiment, _page_size=5)
    assert len(search.trials) == len(search_store.data)
    assert search.trials["run_id"].is_unique
    child_calls = [c for c in calls if "parentRunId" in c.get("filter_string", "")]
    assert len(child_calls) == 3  # 12 children in pages of 5
    assert all(c["max_results"] == 5 for c in child_calls)


def test_load_search_by_parent_id(search_store: Any) -> None:
    s = search_store
    old = load_search(s.uri, s.experiment, parent_run_id=s.old_parent_run_id)
    assert old.parent_run_id == s.old_parent_run_id
    assert old.objectives == [("accuracy", "maximize")]
    assert old.trials.empty
    assert {"run_id", "trial_number", "accuracy", "bits", "status"} <= set(old.trials.columns)


def test_unknown_experiment_lists_the_existing_ones(search_store: Any) -> None:
    with pytest.raises(SearchNotFound) as info:
        load_search(search_store.uri, "compress-digitz")
    msg = str(info.value)
    assert "'compress-digitz' does not exist" in msg
    assert "'compress-digits'" in msg and "'other'" in msg


def test_experiment_without_search(search_store: Any) -> None:
    with pytest.raises(SearchNotFound, match="'other' has no search run"):
        load_search(search_store.uri, "other")


def test_bad_parent_ids(search_store: Any) -> None:
    s = search_store
    with pytest.raises(SearchNotFound, match="'deadbeef' does not exist"):
        load_search(s.uri, s.experiment, parent_run_id="deadbeef")
    with pytest.raises(SearchNotFound, match=r"not a search run.*got 'trial'"):
        load_search(s.uri, s.experiment, parent_run_id=s.child_ids[0])
    with pytest.raises(SearchNotFound, match=r"not\s+to 'other'"):
        load_search(s.uri, "other", parent_run_id=s.parent_run_id)


def test_download_model(search_store: Any, tmp_path: Path) -> None:
    s = search_store
    run_id = s.child_ids[2]
    dst = tmp_path / "deep" / "er" / "chosen.onnx"
    assert download_model(s.uri, run_id, dst) == dst
    assert dst.read_bytes() == s.models[run_id]
    # An existing folder receives model.onnx.
    folder = tmp_path / "folder"
    folder.mkdir()
    written = download_model(s.uri, run_id, folder)
    assert written == folder / "model.onnx"
    assert written.read_bytes() == s.models[run_id]


def test_download_model_errors(search_store: Any, tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"cannot download artifact 'model/model\.onnx' of run"):
        download_model(search_store.uri, search_store.parent_run_id, tmp_path / "m.onnx")
    with pytest.raises(ReportError, match="deadbeef"):
        download_model(search_store.uri, "deadbeef", tmp_path / "m.onnx")


def test_load_search_rejects_malformed_params(store_factory: Any) -> None:
    s = store_factory("malformed")
    s.client.set_tag(s.child_ids[0], "slimtune.trial_number", "first")
    with pytest.raises(ReportError, match=r"trial_number must be an integer, got 'first'"):
        load_search(s.uri, s.experiment)


def test_int_params_logged_as_floats_are_read_as_ints(store_factory: Any) -> None:
    s = store_factory("floaty")
    parent = s.client.create_run(
        s.experiment_id,
        tags={"slimtune.role": "search", "slimtune.objectives": "accuracy:maximize"},
    )
    run = s.client.create_run(
        s.experiment_id,
        tags={"mlflow.parentRunId": parent.info.run_id, "slimtune.trial_number": "0"},
    )
    s.client.log_param(run.info.run_id, "bits", "8.0")
    s.client.log_param(run.info.run_id, "batch_size", "64")
    df = load_search(s.uri, s.experiment, parent_run_id=parent.info.run_id).trials
    assert df["bits"].tolist() == [8] and df["batch_size"].tolist() == [64]
    # lr and sparsity were never logged: missing, not an error.
    assert pd.isna(df["lr"].iloc[0])
