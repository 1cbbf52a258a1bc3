"""A search's fixed cost: the task's dry run runs while Ray and the latency meter start, and a
dry run that fails still stops the search with its reason, exit 2, nothing written to MLflow."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.orchestrator.conftest import BROKEN_FORWARD_TASK, cli, small_config

TINY = Path(__file__).resolve().parents[1] / "trials"
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_a_dry_run_that_fails_beside_ray_start_stops_the_search_and_writes_nothing(
    tmp_path: Path,
) -> None:
    (tmp_path / "broken_task.py").write_text(BROKEN_FORWARD_TASK)
    config = small_config("broken", trials=2, task="broken_task:BrokenForward")
    (tmp_path / "c.yaml").write_text(config)
    path = os.pathsep.join(str(p) for p in (tmp_path, TINY, ROOT))
    done = cli("search", "c.yaml", cwd=tmp_path, env={"PYTHONPATH": path}, timeout=300)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert "boom in forward" in done.stderr and "forward" in done.stderr
    assert "Traceback" not in done.stderr
    assert "passed its dry run" not in done.stdout
    assert not (tmp_path / "mlflow.db").exists()  # nothing recorded
    assert not (tmp_path / "mlruns").exists()
