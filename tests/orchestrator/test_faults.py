"""Faults with real components: a killed driver, a lost Ray node, a tracking server that goes
away, trials that fail. Each test asserts the final MLflow contents: every trial exactly once,
none lost, statuses right."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from tests.orchestrator.conftest import cli_env, small_config

pytestmark = pytest.mark.e2e


def _search(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "search", "c.yaml", *args],
        cwd=cwd,
        env=env or cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _children(uri: str, experiment: str) -> list[Any]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("slimtune.role") == "trial"]


def _searches(uri: str, experiment: str) -> list[Any]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("slimtune.role") == "search"]


def _wait_for(
    cond: Any, timeout: float, what: str, proc: subprocess.Popen[str] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"search ended early while waiting for {what}: {err}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _assert_each_trial_once(
    uri: str, experiment: str, trials: int, *, stopped_ok: bool = False
) -> list[Any]:
    """Each trial has exactly one run, FINISHED with its objectives (or, with ``stopped_ok``,
    KILLED by early stopping, tagged so)."""
    children = _children(uri, experiment)
    numbers = sorted(int(c.data.tags["slimtune.trial_number"]) for c in children)
    assert numbers == list(range(trials)), numbers
    ids = collections.Counter(c.data.tags["slimtune.trial_id"] for c in children)
    assert all(n == 1 for n in ids.values()), ids
    for c in children:
        if stopped_ok and c.data.tags.get("early_stopped") == "true":
            assert c.info.status == "KILLED" and "accuracy" not in c.data.metrics
            continue
        assert c.info.status == "FINISHED", [c.info.status for c in children]
        assert 0 < c.data.metrics["accuracy"] <= 1 and c.data.metrics["latency_ms"] > 0
    return children


def _counts(search: Any) -> tuple[float, float]:
    """The trial counts a search run recorded: (trials_finished, trials_failed)."""
    return search.data.metrics["trials_finished"], search.data.metrics["trials_failed"]


def _kill_group(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def old_search(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished two-trial search of ``small_config("old")`` (its work directory), taken over by
    the test that resumes a search recorded by an older slimtune, and a copy of the cache it
    made (the digits baseline, the int8 format choice, the scheme checks): the other tests'
    first searches start from it, as every search after the first on a machine does, rather
    than each training and timing the same baseline again."""
    work = tmp_path_factory.mktemp("old")
    (work / "c.yaml").write_text(small_config("old", trials=2))
    first = _search(work)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, out[-2000:] + err[-4000:]
    cache = tmp_path_factory.mktemp("digits-cache") / "cache"
    shutil.copytree(work / ".slimtune" / "cache", cache)
    return work, cache


@pytest.fixture
def warm_cache(tmp_path: Path, old_search: tuple[Path, Path]) -> Path:
    """``tmp_path`` with the digits cache of :func:`old_search` in place (the faults these tests
    inject do not involve the baseline)."""
    shutil.copytree(old_search[1], tmp_path / ".slimtune" / "cache")
    return tmp_path


def test_unreachable_tracking_server_fails_at_once(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    (tmp_path / "c.yaml").write_text(
        small_config("x", trials=2, extra=f"tracking: {{uri: 'http://127.0.0.1:{port}'}}")
    )
    t0 = time.monotonic()
    proc = _search(tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, out + err
    assert "does not answer" in err and "Traceback" not in err
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / ".slimtune" / "ray").exists()  # Ray never started a search


MO_ASHA = "early_stopping: {name: mo-asha, min_epochs: 1, reduction_factor: 3}"


def _mo_asha_records(work: Path) -> dict[str, Any]:
    [path] = (work / ".slimtune" / "runs").glob("*/mo_asha_state.json")
    return dict(json.loads(path.read_text()))


@pytest.mark.usefixtures("warm_cache")
def test_driver_killed_then_resumed_continues_the_same_search(tmp_path: Path) -> None:
    """SIGKILL to the driver's process group once MO-ASHA has stopped a trial at its rung (epoch
    1 of 2) and let another finish; --resume then continues the same search (issue 13 item 6):
    each trial is recorded once, trials ended before the crash are not re-run, the stopped ones
    stay KILLED with early_stopped=true, and the scheduler's decisions before the crash are kept
    (it read its state file back: a fresh one would have forgotten them)."""
    trials = 6
    (tmp_path / "c.yaml").write_text(small_config("resume", trials=trials, epochs=2, extra=MO_ASHA))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def stopped(c: Any) -> bool:
        return c.info.status == "KILLED" and c.data.tags.get("early_stopped") == "true"

    proc = _search(tmp_path)
    try:

        def one_stopped_one_finished() -> bool:
            children = _children(uri, "resume")
            return any(map(stopped, children)) and any(
                c.info.status == "FINISHED" for c in children
            )

        _wait_for(one_stopped_one_finished, 600, "a stopped and a finished trial", proc)
    finally:
        _kill_group(proc)  # SIGKILL the driver and everything it started
    before = {c.data.tags["slimtune.trial_id"]: c for c in _children(uri, "resume")}
    ended_before = {k for k, c in before.items() if c.info.status == "FINISHED" or stopped(c)}
    stopped_before = {k for k, c in before.items() if stopped(c)}
    state_before = _mo_asha_records(tmp_path)
    assert stopped_before and stopped_before <= set(state_before["decisions"])

    resumed = _search(tmp_path, "--resume")
    out, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, out[-2000:] + err[-4000:]
    children = _assert_each_trial_once(uri, "resume", trials, stopped_ok=True)
    searches = _searches(uri, "resume")
    assert len(searches) == 1 and searches[0].info.status == "FINISHED"
    n_stopped = sum(map(stopped, children))
    assert f"{trials - n_stopped} trials finished, 0 failed, {n_stopped} stopped early" in out
    assert _counts(searches[0]) == (trials - n_stopped, 0)
    assert searches[0].data.metrics["trials_stopped"] == n_stopped
    after = {c.data.tags["slimtune.trial_id"]: c for c in children}
    for tid in ended_before:  # ended trials were not re-run: same run, same end, same status
        assert after[tid].info.run_id == before[tid].info.run_id
        assert after[tid].info.end_time == before[tid].info.end_time
        assert after[tid].info.status == before[tid].info.status
    for tid in stopped_before:
        assert after[tid].data.tags["stopped_at_epoch"] == "1"
        assert after[tid].data.tags["early_stop_reason"].startswith("mo-asha: at rung epoch 1")
    # The resumed scheduler started from the saved state: the decisions and rung records of
    # the trials that ended before the crash are still there, unchanged. (A trial cut off by
    # the crash after its rung goes on from that rung's state; one cut off before it runs
    # again, reaches the rung and is decided anew.)
    state_after = _mo_asha_records(tmp_path)
    for tid in ended_before:
        assert state_after["decisions"][tid] == state_before["decisions"][tid], tid
        assert state_after["records"]["1"][tid] == state_before["records"]["1"][tid], tid
    # And every trial the scheduler stopped is a KILLED early-stopped run, and only those.
    stopped_ids = {t for t, d in state_after["decisions"].items() if d["stop"]}
    assert stopped_ids == {t for t, c in after.items() if stopped(c)}


def _as_if_recorded_before_quant_scheme(work: Path, uri: str, experiment: str) -> None:
    """Make a finished search look like one an older slimtune (before ``space.quant_scheme``)
    recorded, whose driver died after its trials finished in MLflow but before Ray's state
    said so: no ``quant_scheme`` in the child runs' params nor in Ray's trial configs, every
    Ray trial RUNNING, the search run KILLED and without the tag naming its config artifact.
    (The saved Optuna study is left as it is: a finished trial's replay does not consult
    it.)"""
    # The newest state file: the one Ray restores from (a resumed search writes another).
    state_file = sorted((work / ".slimtune" / "ray").glob("search-*/experiment_state-*.json"))[-1]
    state = json.loads(state_file.read_text())
    for entry in state["trial_data"]:
        trial = json.loads(entry[0])
        for key in ("config", "evaluated_params", "_Trial__unresolved_config"):
            trial[key].pop("quant_scheme", None)
        trial["status"] = "RUNNING"
        entry[0] = json.dumps(trial)
    state_file.write_text(json.dumps(state))
    [search] = _searches(uri, experiment)
    with contextlib.closing(sqlite3.connect(work / "mlflow.db")) as db, db:
        db.execute("DELETE FROM params WHERE key = 'quant_scheme'")
        db.execute("DELETE FROM tags WHERE key = 'slimtune.config_artifact'")
        db.execute("UPDATE runs SET status = 'KILLED' WHERE run_uuid = ?", (search.info.run_id,))


def _recorded(run: Any) -> tuple[Any, ...]:
    return (run.info.status, run.info.end_time, run.data.tags, run.data.params, run.data.metrics)


def test_resume_of_a_search_recorded_before_quant_scheme_replays_its_trials(
    old_search: tuple[Path, Path],
) -> None:
    """One search (:func:`old_search`), resumed three times: with an edited config (refused),
    with its own config (its trials replayed), and with a trial whose record disagrees (counted
    as failed)."""
    trials = 2
    tmp_path = old_search[0]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _as_if_recorded_before_quant_scheme(tmp_path, uri, "old")
    before = {c.info.run_id: c for c in _children(uri, "old")}
    assert all("quant_scheme" not in c.data.params for c in before.values())
    [killed] = _searches(uri, "old")
    assert "slimtune.config_artifact" not in killed.data.tags

    # An edited config is refused before anything runs, and nothing recorded changes; the
    # config the search started with is found without the tag (its one .yaml artifact).
    original = (tmp_path / "c.yaml").read_text()
    (tmp_path / "c.yaml").write_text(original.replace("high: 0.8", "high: 0.9"))
    refused = _search(tmp_path, "--resume", "--trials", "3")
    out, err = refused.communicate(timeout=300)
    assert refused.returncode == 2, out[-2000:] + err[-4000:]
    assert "space.sparsity.high: started with 0.8, now 0.9" in err, err[-4000:]
    assert "trials: started with 2, now 3" in err and "Traceback" not in err, err[-4000:]
    assert "runs with the config it started with" in err and "without --resume" in err
    [still] = _searches(uri, "old")
    assert _recorded(still) == _recorded(killed)
    assert {c.info.run_id: _recorded(c) for c in _children(uri, "old")} == {
        k: _recorded(c) for k, c in before.items()
    }

    # The original config with quant_scheme written out (its default, what the older
    # slimtune ran) and the state's place named (where the records are may differ) resumes.
    (tmp_path / "c.yaml").write_text(
        original.replace("space:\n", "space:\n  quant_scheme: qat\n")
        + f"storage: {tmp_path / '.slimtune' / 'ray'}\n"
    )
    resumed = _search(tmp_path, "--resume")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-2000:] + err[-4000:]
    # Each finished trial is replayed (its runs lack the knob, which compares as its default,
    # qat: what the older slimtune ran), not failed as "recorded with other parameters".
    assert f"{trials} trials finished, 0 failed" in out, out[-2000:] + err[-4000:]
    assert "FAILED" not in out and "other parameters" not in out + err, out[-2000:]
    children = _assert_each_trial_once(uri, "old", trials)
    for run in children:  # nothing recorded was re-run or rewritten
        old = before[run.info.run_id]
        assert run.info.end_time == old.info.end_time and run.data.params == old.data.params
    [search] = _searches(uri, "old")
    assert search.info.status == "FINISHED"
    assert _counts(search) == (trials, 0)  # what the CLI's last line said

    # Resumed again, a trial whose record now disagrees with Ray's state fails its replay: Ray
    # retries it, then ends it with an error and keeps the result it reported before (the
    # objectives included). It counts as failed, on the last line and in the search run alike.
    _as_if_recorded_before_quant_scheme(tmp_path, uri, "old")
    tampered = sorted(before)[0]
    with contextlib.closing(sqlite3.connect(tmp_path / "mlflow.db")) as db, db:
        db.execute(
            "UPDATE params SET value = '0.99' WHERE key = 'sparsity' AND run_uuid = ?",
            (tampered,),
        )
    again = _search(tmp_path, "--resume")
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, out[-2000:] + err[-4000:]
    assert "1 trials finished, 1 failed" in out, out[-2000:] + err[-4000:]
    assert "FAILED" in out and "other parameters" in out, out[-2000:]
    [search] = _searches(uri, "old")
    assert search.info.status == "FINISHED" and _counts(search) == (1, 1)


FAILING_TASK = '''
import torch
from torch import nn
from trials import Task

class Broken(Task):
    """Fine in the driver (dry run, baseline); its metric fails inside Ray's workers, as a
    package missing on the worker nodes would make it."""
    name = "broken"
    baseline_epochs = 1
    def build_model(self):
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    def train_data(self):
        g = torch.Generator().manual_seed(0)
        return torch.rand(64, 1, 4, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    def val_data(self):
        g = torch.Generator().manual_seed(1)
        return torch.rand(16, 1, 4, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
    def metric(self, logits, targets):
        import ray
        if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
            raise ValueError("metric cannot run on this worker")
        return float((logits.argmax(1) == targets).mean())
'''


def test_first_trials_all_failing_stop_the_search_with_the_common_reason(tmp_path: Path) -> None:
    (tmp_path / "broken_task.py").write_text(FAILING_TASK)
    (tmp_path / "c.yaml").write_text(
        small_config(
            "broken", trials=8, task="broken_task:Broken", extra="faults: {stop_after_failures: 2}"
        )
    )
    proc = _search(tmp_path, env=cli_env(PYTHONPATH=str(tmp_path)))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, out + err
    assert "stopped early" in err and "metric cannot run on this worker" in err
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    children = _children(uri, "broken")
    assert 2 <= len(children) < 8
    for c in children:
        if c.info.status != "RUNNING":
            assert c.info.status in ("FAILED", "KILLED")
        if c.info.status == "FAILED":
            assert "ValueError: metric cannot run on this worker" in c.data.tags["slimtune.error"]
    failed = [c for c in children if c.info.status == "FAILED"]
    assert len(failed) >= 2
    (search,) = _searches(uri, "broken")
    assert search.info.status == "FAILED" and "stopped early" in search.data.tags["slimtune.error"]

    # --resume restores the stopper Ray Tune saved with the search: the failing trials stop it
    # again, and the search says so rather than ending FINISHED.
    proc = _search(tmp_path, "--resume", env=cli_env(PYTHONPATH=str(tmp_path)))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, out + err
    assert "stopped early" in err and "metric cannot run on this worker" in err
    (search,) = _searches(uri, "broken")
    assert search.info.status == "FAILED" and "stopped early" in search.data.tags["slimtune.error"]


@pytest.fixture
def two_node_cluster() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        yield cluster, nodes
    finally:
        cluster.shutdown()


def _search_losing_a_node(
    work: Path, cluster: Any, node: Any, when: Any, what: str, *, settle: float = 0
) -> None:
    """Run the search of ``work`` on ``cluster``; once ``when()`` holds (and ``settle`` seconds
    more) remove ``node`` without grace and add a replacement, as an autoscaler would; the
    search must still end with exit 0."""
    proc = _search(work, "--address", cluster.address)
    try:
        _wait_for(when, 600, what, proc)
        time.sleep(settle)
        cluster.remove_node(node, allow_graceful=False)
        cluster.add_node(num_cpus=1)
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    assert proc.returncode == 0, out[-2000:] + err[-4000:]


@pytest.mark.usefixtures("warm_cache")
def test_a_lost_node_mid_trial_is_retried_and_recorded_once(
    tmp_path: Path, two_node_cluster: Any
) -> None:
    cluster, nodes = two_node_cluster
    trials = 4
    (tmp_path / "c.yaml").write_text(small_config("nodes", trials=trials))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def running() -> bool:
        return any(c.info.status == "RUNNING" for c in _children(uri, "nodes"))

    # settle: 2 s after the trial starts running, inside its fine-tuning
    _search_losing_a_node(tmp_path, cluster, nodes[0], running, "a running trial", settle=2)
    children = _assert_each_trial_once(uri, "nodes", trials)
    attempts = [int(c.data.tags.get("slimtune.attempts", "1")) for c in children]
    assert max(attempts) >= 2, "the killed trial must have been retried into its own run"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(store: Path, port: int) -> subprocess.Popen[str]:
    exe = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [
            str(exe),
            "server",
            "--backend-store-uri",
            f"sqlite:///{store / 'mlflow.db'}",
            "--artifacts-destination",
            str(store / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    _wait_for(healthy, 120, "mlflow server /health")
    return proc


@pytest.mark.usefixtures("warm_cache")
def test_tracking_server_stopped_and_restarted_mid_search_loses_nothing(tmp_path: Path) -> None:
    store = tmp_path / "server"
    store.mkdir()
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _start_server(store, port)
    trials = 4  # two finish before the server goes, two run and finish while it is away
    (tmp_path / "c.yaml").write_text(
        small_config("server", trials=trials, extra=f"tracking: {{uri: '{uri}'}}")
    )
    proc = _search(tmp_path)
    try:

        def finished() -> bool:
            return sum(c.info.status == "FINISHED" for c in _children(uri, "server")) >= 2

        _wait_for(finished, 600, "two finished trials", proc)
        _kill_group(server, signal.SIGTERM)
        time.sleep(2)  # the server is away while trials keep finishing (and for its restart)
        server = _start_server(store, port)
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-2000:] + err[-4000:]
        children = _assert_each_trial_once(uri, "server", trials)
        client = MlflowClient(uri)
        for c in children:  # artifacts went through the server's proxy, and are there
            names = [a.path for a in client.list_artifacts(c.info.run_id, "model")]
            assert names == ["model/model.onnx"]
    finally:
        if proc.poll() is None:
            _kill_group(proc)
        _kill_group(server, signal.SIGTERM)


def test_a_failing_baseline_is_a_clean_error(tmp_path: Path) -> None:
    # Regression: the dense baseline's failure used to escape as a traceback.
    task = FAILING_TASK.replace(
        "if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:",
        "if len(targets) > 4:  # the dry run passes (4 samples), the baseline (16) fails",
    )
    (tmp_path / "broken_task.py").write_text(task)
    (tmp_path / "c.yaml").write_text(small_config("nobase", trials=2, task="broken_task:Broken"))
    proc = _search(tmp_path, env=cli_env(PYTHONPATH=str(tmp_path)))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, out + err
    assert "the dense baseline of task 'broken_task:Broken' failed" in err
    assert "Traceback" not in err
    (search,) = _searches(f"sqlite:///{tmp_path / 'mlflow.db'}", "nobase")
    assert search.info.status == "FAILED"


def _state_files(work: Path, pattern: str) -> list[Path]:
    return sorted((work / ".slimtune" / "ray").glob(f"search-*/{pattern}"))


def _assert_interrupted(proc: subprocess.Popen[str], uri: str, experiment: str) -> int:
    """The search ended KILLED with exit 130 and said how to resume; no trial run is left
    RUNNING and the search run's counts are MLflow's. Returns how many trials finished."""
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-2000:] + err[-4000:]
    assert "--resume" in err and "Traceback" not in err, err[-4000:]
    [search] = _searches(uri, experiment)
    assert search.info.status == "KILLED", search.info.status
    statuses = [c.info.status for c in _children(uri, experiment)]
    assert "RUNNING" not in statuses, statuses
    finished = statuses.count("FINISHED")
    assert _counts(search) == (finished, len(statuses) - finished)
    assert f"{finished} of " in err, err[-2000:]
    return finished


def test_ctrl_c_ends_the_search_killed_and_resume_continues_it(tmp_path: Path) -> None:
    """SIGINT to the driver before its trials start (the dense baseline) and while they run,
    then to the whole process group of a resumed search; between them, a damaged and an
    untrusted saved state are refused; the last resume finishes. The cache starts empty, so the
    first SIGINT lands while the baseline trains. (With a warm cache it once landed inside a
    garbage-collection callback, where Python drops a KeyboardInterrupt, and the search ran to
    the end with exit 0; the driver now remembers the signal: tests/orchestrator/test_sigint.py.)
    Eight trials, two at a time: when the third interrupt comes (one trial after the resume),
    trials are left that have not started, so a quiet machine's fast trials cannot all finish
    before it lands."""
    trials = 8
    (tmp_path / "c.yaml").write_text(small_config("sigint", trials=trials))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def finished_at_least(n: int) -> Any:
        return lambda: sum(c.info.status == "FINISHED" for c in _children(uri, "sigint")) >= n

    def search_started() -> bool:
        client = MlflowClient(uri)
        return bool(client.get_experiment_by_name("sigint")) and bool(_searches(uri, "sigint"))

    early = _search(tmp_path)
    try:
        _wait_for(search_started, 600, "the search run", early)
        os.kill(early.pid, signal.SIGINT)  # most likely during the baseline: no trial yet
        _assert_interrupted(early, uri, "sigint")
    finally:
        if early.poll() is None:
            _kill_group(early)

    proc = _search(tmp_path, "--resume")
    try:
        _wait_for(finished_at_least(1), 600, "a finished trial", proc)
        os.kill(proc.pid, signal.SIGINT)  # the driver alone
        done = _assert_interrupted(proc, uri, "sigint")
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    assert done < trials

    # A damaged searcher state is refused at once, naming the file and the fix.
    [state] = _state_files(tmp_path, "searcher-state-*.json")[-1:]
    saved = state.read_bytes()
    state.write_bytes(saved[: len(saved) // 2])
    t0 = time.monotonic()
    refused = _search(tmp_path, "--resume")
    out, err = refused.communicate(timeout=120)
    assert refused.returncode == 2, out[-2000:] + err[-4000:]
    assert f"{state} is damaged" in err and "without --resume" in err, err[-2000:]
    assert time.monotonic() - t0 < 60 and "Traceback" not in err
    state.write_bytes(saved)
    # So is a state directory that other users may write to (its pickles run as code).
    state.parent.chmod(0o777)
    refused = _search(tmp_path, "--resume")
    out, err = refused.communicate(timeout=120)
    assert refused.returncode == 2, out[-2000:] + err[-4000:]
    assert "writable by every user" in err and "chmod -R go-w" in err, err[-2000:]
    state.parent.chmod(0o755)
    [search] = _searches(uri, "sigint")
    assert search.info.status == "KILLED"  # refusals change nothing recorded

    resumed = _search(tmp_path, "--resume")
    try:
        _wait_for(finished_at_least(done + 1), 600, "one more finished trial", resumed)
        os.killpg(resumed.pid, signal.SIGINT)  # the process group, as a terminal's Ctrl-C
        _assert_interrupted(resumed, uri, "sigint")
    finally:
        if resumed.poll() is None:
            _kill_group(resumed)

    last = _search(tmp_path, "--resume")
    out, err = last.communicate(timeout=900)
    assert last.returncode == 0, out[-2000:] + err[-4000:]
    assert f"{trials} trials finished, 0 failed" in out, out[-2000:] + err[-4000:]
    children = _assert_each_trial_once(uri, "sigint", trials)
    [search] = _searches(uri, "sigint")
    assert search.info.status == "FINISHED" and _counts(search) == (trials, 0)
    # Why an earlier attempt ended is kept aside, not passed off as the outcome. Whether an
    # interrupt caught a trial mid-run (and so left a previous_error) depends on timing: the
    # move itself is checked in test_records.py.
    for run in [search, *children]:
        assert "slimtune.error" not in run.data.tags, run.data.tags


@pytest.mark.usefixtures("warm_cache")
def test_a_store_deleted_mid_search_fails_it_loudly(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(small_config("lost", trials=6))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = _search(tmp_path)
    try:

        def a_trial_started() -> bool:
            return bool(_children(uri, "lost"))

        _wait_for(a_trial_started, 600, "a trial's run", proc)
        for name in ("mlflow.db", "mlflow.db-wal", "mlflow.db-shm"):
            (tmp_path / name).unlink(missing_ok=True)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    assert proc.returncode == 1, out[-2000:] + err[-4000:]
    assert "during the search" in err and "records" in err and "are gone" in err, err[-3000:]
    assert "Traceback" not in err, err[-4000:]
    assert "trials finished" not in out and "Inspect:" not in out, out[-2000:]


@pytest.mark.usefixtures("warm_cache")
def test_a_trial_lost_after_its_rung_is_retried_at_that_rung(
    tmp_path: Path, two_node_cluster: Any
) -> None:
    """MO-ASHA (rungs at epochs 1, 3, 9 of 12): the trial's node is lost once Ray Tune holds
    the state of a rung; the retry goes on from that rung in the same run, with no rung
    reported twice, and finishes.

    A state file in the storage is not yet Ray Tune's: the driver takes it after a round trip
    to the trial's actor (the report's save), and a node lost in between leaves the retry
    nothing to go on from (it starts over, correctly, but that is another test). A trial's
    report blocks until the driver has processed the one before, so the second rung's file
    (``checkpoint_000001``) in the storage shows that the first rung's state is held."""
    cluster, nodes = two_node_cluster
    cluster.remove_node(nodes[1])  # one worker node: the trial is on nodes[0]
    early = "early_stopping: {name: mo-asha, min_epochs: 1, reduction_factor: 3}"
    (tmp_path / "c.yaml").write_text(small_config("rung", trials=1, epochs=12, extra=early))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def saved_a_rung() -> bool:
        saved = (tmp_path / ".slimtune").rglob("checkpoint_*/rung_state.pt")
        return any(p.parent.name != "checkpoint_000000" for p in saved)

    what = "a second rung state in the search's storage"
    _search_losing_a_node(tmp_path, cluster, nodes[0], saved_a_rung, what)
    (trial,) = _assert_each_trial_once(uri, "rung", 1)
    assert int(trial.data.tags["slimtune.attempts"]) >= 2, trial.data.tags
    assert "resume_refused" not in trial.data.tags, trial.data.tags["resume_refused"]
    resumed_at = int(trial.data.tags["resumed_at_epoch"])
    assert resumed_at in (1, 3, 9)
    history = MlflowClient(uri).get_metric_history(trial.info.run_id, "rung_accuracy")
    steps = collections.Counter(m.step for m in history)
    assert set(steps) == set(range(12 + 1)), steps  # every epoch reported, rung 0 included
    # Up to the rung it resumed at, each epoch was reported once: the retry did not redo them.
    assert all(steps[e] == 1 for e in range(resumed_at + 1)), steps
    assert trial.data.metrics["early_size_bytes"] == trial.data.metrics["size_bytes"]
