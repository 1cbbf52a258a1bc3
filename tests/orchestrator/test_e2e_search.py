"""A real small search through the CLI (real Ray, real MLflow SQLite), then its MLflow contents."""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from reports import download_model_version, load_search
from tests.orchestrator.conftest import E2E_TRIALS, E2ESearch, cli
from trials import DigitsTask, TrialRecord, onnx_accuracy

pytestmark = pytest.mark.e2e

Search = E2ESearch
TRIALS = E2E_TRIALS
_cli = cli


@pytest.fixture
def search(e2e_search: Search) -> Search:
    """The session's one finished search (tests/orchestrator/conftest.py), shared with UI tests."""
    return e2e_search


def _uri(work: Path) -> str:
    return f"sqlite:///{work / 'mlflow.db'}"


def test_console_shows_a_line_per_trial_and_the_front(search: Search) -> None:
    _, proc = search
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[")]
    assert len(lines) == TRIALS, proc.stdout
    assert "Pareto front" in proc.stdout
    assert "dense baseline" in proc.stdout
    # Not a terminal (a pipe): plain progress lines, no control codes; the cost at the end.
    assert "\x1b[" not in proc.stdout
    progress = [ln for ln in proc.stdout.splitlines() if "progress: " in ln]
    assert len(progress) == TRIALS
    assert re.search(rf"progress: {TRIALS}/{TRIALS} trials: \d+ done, \d+ failed", progress[-1])
    assert "ETA 0s" in progress[-1]
    assert re.search(r"Search cost: [\d.]+ CPU seconds, 0\.0 GPU seconds", proc.stdout)


def test_mlflow_holds_one_parent_and_a_child_per_trial(search: Search) -> None:
    work, _ = search
    client = MlflowClient(_uri(work))
    exp = client.get_experiment_by_name("e2e")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("slimtune.role") == "search"]
    children = [r for r in runs if r.data.tags.get("slimtune.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert len(children) == TRIALS
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(int(c.data.tags["slimtune.trial_number"]) for c in children) == list(
        range(TRIALS)
    )
    assert parent.data.metrics["baseline_accuracy"] > 0.9
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"pareto.csv", "accuracy_vs_size.png", "accuracy_vs_latency.png"} <= artifacts
    for c in children:
        m = c.data.metrics
        assert c.info.status == "FINISHED"
        assert set(c.data.params) >= {"lr", "batch_size", "sparsity", "bits"}
        assert 0.5 < m["accuracy"] <= 1.0
        assert 0 < m["size_gzip_bytes"] < m["size_bytes"]
        assert 0 < m["latency_ms"] <= m["latency_p90_ms"]
        bits = int(c.data.params["bits"])
        expected = "simulated" if bits in (2, 3, 5, 6, 7) else "real"
        assert c.data.tags["artifact"] == expected


def test_pareto_tags_match_an_independent_recomputation(
    search: Search, noise_ranks: Callable[..., dict[str, int]]
) -> None:
    """``pareto`` is the noise-aware front (docs/noise.md), ``pareto_strict`` the strict one."""
    work, _ = search
    df = load_search(_uri(work), "e2e").trials
    metrics = {
        str(r["run_id"]): {k: float(v) for k, v in r.items() if isinstance(v, float | int)}
        for _, r in df.iterrows()
    }
    rank = noise_ranks(metrics, formats=dict(zip(df["run_id"], df["format"], strict=True)))
    signs = np.array([-1.0, 1.0, 1.0])  # maximize accuracy -> minimize its negative
    pts = df[["accuracy", "size_gzip_bytes", "latency_ms"]].to_numpy() * signs
    for i, p in enumerate(pts):
        assert df["pareto"].iloc[i] == (rank[str(df["run_id"].iloc[i])] == 0), df.iloc[i]
        dominated = any(np.all(q <= p) and np.any(q < p) for j, q in enumerate(pts) if j != i)
        assert df["pareto_strict"].iloc[i] == (not dominated), df.iloc[i]
        assert df["val_samples"].iloc[i] > 0 and df["latency_blocks"].iloc[i] >= 2


def test_logged_artifact_reproduces_logged_accuracy(search: Search, tmp_path: Path) -> None:
    work, _ = search
    client = MlflowClient(_uri(work))
    df = load_search(_uri(work), "e2e").trials
    task = DigitsTask()
    for _, row in df.iterrows():
        local = client.download_artifacts(row["run_id"], "model/model.onnx", str(tmp_path))
        assert onnx_accuracy(Path(local), task) == pytest.approx(row["accuracy"], abs=1e-9)


def test_select_returns_a_trial_meeting_the_constraints(search: Search) -> None:
    work, _ = search
    df = load_search(_uri(work), "e2e").trials
    min_acc = float(df["accuracy"].median())
    max_lat = float(df["latency_ms"].max())
    proc = _cli(
        "select",
        "e2e",
        "--min-accuracy",
        str(min_acc),
        "--max-latency-ms",
        str(max_lat),
        "--out",
        "chosen.onnx",
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr
    feasible = df[(df["accuracy"] >= min_acc) & (df["latency_ms"] <= max_lat)]
    best = feasible.sort_values(["accuracy", "latency_ms"], ascending=[False, True]).iloc[0]
    assert f"trial {int(best['trial_number'])} " in proc.stdout
    acc = onnx_accuracy(work / "chosen.onnx", DigitsTask())
    assert acc == pytest.approx(best["accuracy"], abs=1e-9)


def test_select_with_impossible_constraints_says_which_excludes_most(search: Search) -> None:
    work, _ = search
    proc = _cli("select", "e2e", "--min-accuracy", "0.5", "--max-size-kb", "0.001", cwd=work)
    assert proc.returncode == 3
    assert "max_size_kb" in proc.stderr or "max-size-kb" in proc.stderr


def test_bad_config_fails_fast_with_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "experiment: x\ntask: digits\nspace:\n  sparsity: {low: 0.2, high: 1.5}\n"
    )
    t0 = time.perf_counter()
    proc = _cli("search", "bad.yaml", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "space.sparsity" in proc.stderr and "line 4" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()
    assert time.perf_counter() - t0 < 60


def test_unknown_task_fails_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("experiment: x\ntask: nosuchpkg.mod:Task\n")
    proc = _cli("search", "bad.yaml", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "nosuchpkg" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


def _parent(client: MlflowClient) -> Any:
    exp = client.get_experiment_by_name("e2e")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], "tags.`slimtune.role` = 'search'")
    assert len(runs) == 1
    return runs[0]


def test_the_search_meter_chose_the_int8_format_before_the_trials(search: Search) -> None:
    """``int8_format: auto``: the driver had the search's meter time the formats once, before
    Tune started; every 8-bit trial used that choice (timed on the meter's node)."""
    work, proc = search
    lines = proc.stdout.splitlines()
    (chose,) = [i for i, ln in enumerate(lines) if ln.startswith("int8 format (auto): ")]
    assert chose < min(i for i, ln in enumerate(lines) if ln.startswith("["))
    fmt = lines[chose].split()[3]
    (cached,) = (work / ".slimtune" / "cache" / "int8-format").glob("*.json")
    entry = json.loads(cached.read_text())
    assert entry["key"]["timed_by"] == "search-meter" and entry["chosen"] == fmt
    client = MlflowClient(_uri(work))
    parent = _parent(client)
    meter_node = parent.data.tags["baseline_latency_node"]
    # The search run records the choice with the same tags its 8-bit trials carry.
    assert parent.data.tags["int8_format"] == fmt
    assert parent.data.tags["int8_format_node"] == meter_node
    assert parent.data.tags["int8_format_source"] in ("measured", "cached")
    children = client.search_runs(
        [parent.info.experiment_id], "tags.`slimtune.role` = 'trial' and params.bits = '8'"
    )
    assert children  # the seeded sampler's startup draws include 8 bits
    for c in children:
        tags = c.data.tags
        assert tags["int8_format"] == fmt and tags["format"] == f"int8-qdq-{fmt}"
        assert tags["int8_format_source"] in ("measured", "cached")
        assert tags["int8_format_node"] == meter_node == tags["latency_node"]
        for key in ("int8_format_source", "int8_format_latencies_ms"):
            assert tags[key] == parent.data.tags[key]
        assert json.loads(tags["int8_format_latencies_ms"]) == {
            k: round(v, 4) for k, v in entry["latencies_ms"].items()
        }


def test_every_trial_records_the_isolation_mode_that_measured_it(search: Search) -> None:
    """``latency.isolation: auto`` (the default) is resolved once by the meter; the search run
    says the rule, every trial's run and record the mode (``pause`` on a 2-core machine)."""
    work, proc = search
    client = MlflowClient(_uri(work))
    parent = _parent(client)
    mode = parent.data.tags["latency_isolation"]
    rule = parent.data.tags["latency_isolation_rule"]
    assert rule.startswith("auto: ") and rule.endswith(f"-> {mode}")
    assert f"isolation {mode} ({rule})" in proc.stdout
    if len(os.sched_getaffinity(0)) <= 2:
        assert mode == "pause"  # the default keeps the gate on a 2-core machine
    children = client.search_runs([parent.info.experiment_id], "tags.`slimtune.role` = 'trial'")
    (work / "rec").mkdir(exist_ok=True)
    for c in children:
        assert c.data.tags["latency_isolation"] == mode
        path = client.download_artifacts(c.info.run_id, "trial/record.json", str(work / "rec"))
        record = TrialRecord.from_json(Path(path).read_text(), source=path)
        assert record.spec.latency.isolation == mode


def test_hypervolume_is_logged_live_one_point_per_finished_trial(search: Search) -> None:
    work, _ = search
    client = MlflowClient(_uri(work))
    parent = _parent(client)
    history = sorted(
        client.get_metric_history(parent.info.run_id, "hypervolume"), key=lambda m: m.step
    )
    assert [m.step for m in history] == list(range(1, TRIALS + 1))
    values = [m.value for m in history]
    assert all(b >= a for a, b in itertools.pairwise(values)), values
    assert 0 < values[-1] <= 1
    sizes = client.get_metric_history(parent.info.run_id, "pareto_size")
    assert sorted(m.step for m in sizes) == list(range(1, TRIALS + 1))
    # The live callback ran after the trials (in the background, merging updates due at the
    # same time: the backfilled history above has a point per trial) and logged its own cost:
    # one update when the experiment starts, then at most one per finished trial.
    assert 1 <= parent.data.metrics["live_updates"] <= TRIALS + 1
    assert 0 < parent.data.metrics["live_update_ms_mean"] < 2000
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"hypervolume.png", "trials.html"} <= artifacts
    assert float(parent.data.params["resources.cpu"]) == 1


def test_pareto_rank_tags_match_an_independent_recomputation(
    search: Search, noise_ranks: Callable[..., dict[str, int]]
) -> None:
    work, _ = search
    client = MlflowClient(_uri(work))
    parent = _parent(client)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    # Non-dominated sorting by peeling fronts, under the tolerances, without the reports package.
    rank = noise_ranks(
        {c.info.run_id: c.data.metrics for c in children},
        formats={c.info.run_id: c.data.tags["format"] for c in children},
    )
    for c in children:
        assert c.data.tags["pareto_rank"] == str(rank[c.info.run_id])
        assert c.data.tags["pareto"] == ("true" if rank[c.info.run_id] == 0 else "false")
    assert parent.data.tags["slimtune.tolerances"] == (
        "accuracy:auto,size_gzip_bytes:auto,latency_ms:auto"
    )


def test_report_command_writes_a_report_that_opens_offline(search: Search, tmp_path: Path) -> None:
    work, _ = search
    out = tmp_path / "rep"
    proc = _cli("report", "e2e", "--out", str(out), cwd=work)
    assert proc.returncode == 0, proc.stderr
    page = (out / "index.html").read_text()
    assert not re.search(r"https?://", page)
    assert page.count("data:image/png;base64,") == 3
    assert "CPU seconds" in page and f"{TRIALS} trials finished" in page
    interactive = (out / "trials.html").read_text()
    assert not re.search(r"<script[^>]*\ssrc\s*=|<link[^>]*\shref\s*=\s*[\"']?https?:", interactive)
    bad = _cli("report", "no-such-experiment", "--out", str(out), cwd=work)
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_select_register_creates_a_version_that_reproduces_the_accuracy(
    search: Search, tmp_path: Path
) -> None:
    work, _ = search
    proc = _cli(
        "select",
        "e2e",
        "--max-accuracy-drop",
        "50",
        "--optimize",
        "size_gzip_bytes",
        "--register",
        "e2e-model",
        "--remeasure-repeats",
        "20",
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "re-measured latency of" in proc.stdout and "registered: model 'e2e-model'" in proc.stdout
    )
    client = MlflowClient(_uri(work))
    (version,) = client.search_model_versions("name='e2e-model'")
    run = client.get_run(version.run_id)
    path = download_model_version(_uri(work), "e2e-model", version.version, tmp_path / "v")
    acc = onnx_accuracy(path, DigitsTask())
    assert acc == pytest.approx(run.data.metrics["accuracy"], abs=1e-9)
    record = json.loads(
        Path(
            client.download_artifacts(
                version.run_id, version.tags["slimtune.decision"], str(tmp_path)
            )
        ).read_text()
    )
    assert record["constraints"] == {"max_accuracy_drop": 50.0}
    assert record["optimize"] == "size_gzip_bytes"
    assert len(record["runners_up"]) == 3 and all(r["why_lost"] for r in record["runners_up"])
    finalists = record["latency_remeasurement"]["results"]
    assert version.run_id in finalists and len(finalists) == 4
