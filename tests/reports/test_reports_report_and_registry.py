"""The static report, relative constraints and --optimize, the decision record and registry."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from reports import (
    Constraints,
    NoFeasibleTrial,
    ReportError,
    build_report,
    constraint_bands,
    decision_record,
    download_model_version,
    load_search,
    register_selection,
    search_cost,
    select,
    update_front,
    with_remeasured_latency,
)
from searchspace import ConfigError

# Anything that would make a browser fetch from the network.
EXTERNAL_LOAD = re.compile(
    r"""(?:<script[^>]*\ssrc|<link[^>]*\shref|<img[^>]*\ssrc|@import|url\()\s*=?\s*["'(]?\s*(?:https?:)?//""",
    re.IGNORECASE,
)


@pytest.fixture(scope="module")
def store(store_factory: Callable[[str], Any]) -> Any:
    st = store_factory("report")
    # What the orchestrator logs and the report reads: reserved resources, trial times.
    st.client.log_batch(
        st.parent_run_id,
        params=[Param("resources.cpu", "2"), Param("resources.gpu", "0")],
        metrics=[Metric("search_seconds", 42.0, 0, 0)],
    )
    for i, run_id in enumerate(st.child_ids[:-1]):
        st.client.log_metric(run_id, "trial_seconds", 1.0 + i)
    update_front(st.uri, st.parent_run_id)
    return st


def test_report_is_self_contained(store: Any, tmp_path: Path) -> None:
    index = build_report(store.uri, store.experiment, tmp_path / "rep")
    page = index.read_text()
    assert not re.search(r"https?://", page)  # no URL at all in index.html
    assert page.count("data:image/png;base64,") == 3  # two trade-offs and the hypervolume
    # Trials 3 and 4 are identical: one group, shown once, the other named as tied.
    assert "Pareto front (9 of 11 finished trials, 8 groups)" in page
    assert "tied (within tolerance)" in page
    assert "Failed trials (1)" in page and "RuntimeError: export failed" in page
    assert "Best trial per constraint band" in page
    # Cost: sum of trial_seconds (1 + 2 + ... + 11 = 66) x 2 CPUs; no GPU.
    assert "<b>132.0</b>" in page and "<b>0.0</b>" in page
    assert "hypervolume" in page.lower() and "reference point" in page.lower()
    interactive = (tmp_path / "rep" / "trials.html").read_text()
    assert not EXTERNAL_LOAD.search(interactive)
    assert not EXTERNAL_LOAD.search(page)


def test_search_cost_and_bands(store: Any) -> None:
    search = load_search(store.uri, store.experiment)
    cost = search_cost(search)
    assert (cost.trials_with_time, cost.trial_seconds, cost.cpu_seconds, cost.gpu_seconds) == (
        11,
        66.0,
        132.0,
        0.0,
    )
    assert cost.wall_seconds == 42.0
    bands = constraint_bands(search.trials, search.baseline)
    by_label = {b.label: b for b in bands}
    full = by_label["most accurate, file <= 100% of baseline (480.0 KB)"]
    assert full.chosen is not None and full.chosen["trial_number"] == 0
    tenth = by_label["most accurate, file <= 10% of baseline (48.0 KB)"]
    assert tenth.chosen is not None and tenth.chosen["trial_number"] == 7  # 40 KB, 2 bits
    for b in bands:
        if b.chosen is not None:
            expected = select(
                search.trials, b.constraints, optimize=b.optimize, baseline=search.baseline
            )
            assert b.chosen["run_id"] == expected.chosen["run_id"]


def test_accuracy_drop_is_relative_to_the_baseline(store: Any) -> None:
    search = load_search(store.uri, store.experiment)  # baseline accuracy 0.985
    sel = select(search.trials, Constraints(max_accuracy_drop=1.5), baseline=search.baseline)
    assert sel.bounds["max_accuracy_drop"][3] == pytest.approx(0.97)
    assert sel.feasible == 4  # 0.980, 0.970, 0.975, 0.970
    assert "max_accuracy_drop <= 1.5 points (accuracy >= 0.97)" in sel.reason
    # Optimize size among the same trials: the smallest ONNX file, accuracy breaking ties.
    small = select(
        search.trials,
        Constraints(max_accuracy_drop=1.5),
        optimize="size_bytes",
        baseline=search.baseline,
    )
    assert small.chosen["trial_number"] == 1  # 125 KB ties 6 on size; 1 is faster
    assert "lowest size_bytes" in small.reason
    assert small.why_lost(small.runners_up.iloc[0]).startswith("higher latency_ms")
    with pytest.raises(ReportError, match="baseline_accuracy"):
        select(search.trials, Constraints(max_accuracy_drop=1.0))
    with pytest.raises(NoFeasibleTrial, match="max_accuracy_drop excludes the most"):
        select(
            search.trials,
            Constraints(max_accuracy_drop=0.1, max_latency_ms=5),
            baseline=search.baseline,
        )
    with pytest.raises(ReportError, match="optimize must be one of"):
        select(search.trials, Constraints(), optimize="speed")
    with pytest.raises(ConfigError, match="percentage points"):
        Constraints(max_accuracy_drop=-1)


def test_remeasured_latency_can_change_the_choice(store: Any) -> None:
    search = load_search(store.uri, store.experiment)
    cons = Constraints(min_accuracy=0.965)
    first = select(search.trials, cons, optimize="latency_ms")
    assert first.chosen["trial_number"] == 1  # logged 1.10 ms
    faster = str(first.runners_up.iloc[0]["run_id"])
    df = with_remeasured_latency(search.trials, {str(first.chosen["run_id"]): 3.0, faster: 0.5})
    again = select(df, cons, optimize="latency_ms")
    assert again.chosen["run_id"] == faster
    row = df.set_index("run_id").loc[faster]
    assert row["latency_remeasured"] and row["latency_ms"] == 0.5
    assert row["latency_ms_logged"] != 0.5


def test_register_creates_a_version_with_the_onnx_file_and_the_decision(
    store: Any, tmp_path: Path
) -> None:
    search = load_search(store.uri, store.experiment)
    sel = select(search.trials, Constraints(max_accuracy_drop=1.5), baseline=search.baseline)
    record = decision_record(sel, search, remeasurement={"method": "test", "results": {}})
    assert record["constraints"] == {"max_accuracy_drop": 1.5}
    assert [r["trial_number"] for r in record["runners_up"]] == [5, 1, 6]
    assert all(r["why_lost"] for r in record["runners_up"])
    json.dumps(record)  # JSON-able

    version = register_selection(store.uri, "digits-small", sel, record)
    chosen = str(sel.chosen["run_id"])
    assert str(version.version) == "1" and version.run_id == chosen
    assert version.source.endswith(f"{chosen}/artifacts/model")
    assert version.tags["config.bits"] == "32" and version.tags["metric.accuracy"] == "0.98"
    assert "trial 5" in version.tags["slimtune.runners_up"]
    assert "max_accuracy_drop" in (version.description or "")
    path = download_model_version(store.uri, "digits-small", version.version, tmp_path / "dl")
    assert path.read_bytes() == store.models[chosen]

    client = MlflowClient(tracking_uri=store.uri)
    art = version.tags["slimtune.decision"]
    assert art == "decisions/digits-small-v1.json"
    logged = json.loads(Path(client.download_artifacts(chosen, art, str(tmp_path))).read_text())
    assert logged["registered"] == {"name": "digits-small", "version": 1}
    assert logged["chosen"]["run_id"] == chosen

    # A second registration of the same name makes version 2.
    again = register_selection(store.uri, "digits-small", sel, record)
    assert str(again.version) == "2"
    with pytest.raises(ReportError, match="non-empty"):
        register_selection(store.uri, " ", sel, record)


def test_report_of_a_search_without_baseline_still_renders(tmp_path: Path) -> None:
    from reports import SearchRuns, write_report

    df = pd.DataFrame(
        {
            "run_id": ["a", "b"],
            "trial_number": [0, 1],
            "status": ["FINISHED", "FINISHED"],
            "accuracy": [0.9, 0.8],
            "size_bytes": [100.0, 50.0],
            "size_gzip_bytes": [90.0, 40.0],
            "latency_ms": [1.0, 0.5],
        }
    )
    search = SearchRuns(
        "p", "0", [("accuracy", "maximize"), ("size_bytes", "minimize")], {}, df, experiment="x"
    )
    page = write_report(search, tmp_path).read_text()
    assert "not available" in page and "Pareto front (2 of 2" in page
