"""`slimtune search` as a `ray job submit` entrypoint on a real Ray head started with
`ray start --head` (dashboard and job server included): the job joins that cluster through
RAY_ADDRESS and records every trial exactly once in MLflow."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.orchestrator.conftest import small_config

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
TINY_TASK_DIR = Path(__file__).resolve().parents[1] / "trials"
TRIALS = 3
CONFIG = small_config("job", trials=TRIALS, task="trials_tiny_task:TinyDigits")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A Ray head with its dashboard, on ports of its own (other clusters may run on this
    machine) and a short temp dir of its own (Ray's socket paths must stay short). Yields the
    dashboard address and the environment to talk to it; stops every process it started."""
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # The workers (and the job) inherit the head's environment: the task module is found.
        "PYTHONPATH": os.pathsep.join(
            [str(TINY_TASK_DIR), *filter(None, [os.getenv("PYTHONPATH")])]
        ),
    }
    env.pop("RAY_ADDRESS", None)
    dashboard = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="st-ray-")
    args = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--num-cpus=2",
        f"--port={_free_port()}",
        f"--dashboard-port={dashboard}",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        f"--ray-client-server-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    log = tmp_path / "ray-head.log"
    with log.open("w") as sink:
        head = subprocess.Popen(
            args,
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while not _answers(f"{address}/api/version"):
            if head.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the Ray head did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield address, env
    finally:
        # `ray start --block` stops the processes it started when it gets SIGTERM; anything
        # left in its process group (which it leads) is killed after.
        head.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_search_submitted_as_a_ray_job_records_each_trial_once(
    tmp_path: Path, ray_head: tuple[str, dict[str, str]]
) -> None:
    address, env = ray_head
    job_dir = tmp_path / "job"  # uploaded as the job's working dir: the config alone
    job_dir.mkdir()
    (job_dir / "c.yaml").write_text(CONFIG)
    workdir = tmp_path / "work"  # where MLflow's records go: an absolute path on this node
    submitted = subprocess.run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            f"--address={address}",
            f"--working-dir={job_dir}",
            "--",
            str(BIN / "slimtune"),
            "search",
            "c.yaml",
            "--workdir",
            str(workdir),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, output[-5000:]
    assert "succeeded" in output and f"{TRIALS} trials finished, 0 failed" in output

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("job")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=100)
    (search,) = [r for r in runs if r.data.tags.get("slimtune.role") == "search"]
    trials = [r for r in runs if r.data.tags.get("slimtune.role") == "trial"]
    assert search.info.status == "FINISHED"
    assert sorted(int(r.data.tags["slimtune.trial_number"]) for r in trials) == list(range(TRIALS))
    assert len({r.data.tags["slimtune.trial_id"] for r in trials}) == TRIALS
    for run in trials:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == search.info.run_id
        assert 0 < run.data.metrics["accuracy"] <= 1 and run.data.metrics["latency_ms"] > 0
        assert run.data.tags["latency_where"] == "actor"
