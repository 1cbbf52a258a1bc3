"""The one real end-to-end search the orchestrator tests share (real Ray, real MLflow SQLite).

It takes about 90 s on 2 cores, so it runs once per test session, on first use, and every test that
reads a finished search (tests/orchestrator/test_e2e_search.py, test_ui_browser.py) reads this one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

E2E_EXPERIMENT = "e2e"
E2E_TRIALS = 6
E2E_CONFIG = f"""
experiment: {E2E_EXPERIMENT}
task: digits
seed: 0
trials: {E2E_TRIALS}
concurrency: 2
objectives:
  - {{metric: accuracy, direction: maximize}}
  - {{metric: size_gzip_bytes, direction: minimize}}
  - {{metric: latency_ms, direction: minimize}}
space:
  lr: {{low: 1.0e-4, high: 3.0e-3, log: true}}
  batch_size: {{choices: [64, 128]}}
  sparsity: {{low: 0.0, high: 0.8}}
  bits: {{choices: [4, 8, 32]}}
sampler: {{name: tpe, seed: 0, startup_trials: 4}}
training: {{epochs: 1}}
latency: {{warmup: 5, repeats: 30, threads: 1}}
"""

E2ESearch = tuple[Path, subprocess.CompletedProcess[str]]
ROOT = Path(__file__).resolve().parents[2]
QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "RAY_AUTH_MODE": "disabled"}
# A task (put beside trials_tiny_task.py on the path) whose model fails in its forward pass.
BROKEN_FORWARD_TASK = """
from torch import nn
from trials_tiny_task import TinyDigits


class Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom in forward")


class BrokenForward(TinyDigits):
    name = "broken-forward"

    def build_model(self):
        return Boom()
"""
# `slimtune` with orchestrator._ray_session's core threshold lowered in its own process.
BESIDE_RAY = (
    "import sys, orchestrator._ray_session as s; s.BESIDE_RAY_MIN_CORES = 1; "
    "sys.argv[0] = 'slimtune'; from orchestrator.cli import entry; entry()"
)


def small_config(
    experiment: str,
    *,
    trials: int,
    task: str = "digits",
    latency: str = "{warmup: 3, repeats: 20}",
    epochs: int = 1,
    extra: str = "",
) -> str:
    """A small search config (2 at a time, random sampler, ``epochs`` epochs, a short latency
    plan) for the orchestrator tests that run `slimtune search` on a task of their own."""
    return f"""
experiment: {experiment}
task: {task}
trials: {trials}
concurrency: 2
space:
  lr: {{low: 1.0e-4, high: 2.0e-3, log: true}}
  batch_size: {{choices: [128]}}
  sparsity: {{low: 0.0, high: 0.8}}
  bits: {{choices: [8, 32]}}
sampler: {{name: random, seed: 3}}
training: {{epochs: {epochs}}}
latency: {latency}
{extra}
"""


def cli_env(**extra: str) -> dict[str, str]:
    """The environment a test runs `slimtune` in: this one, quiet, plus ``extra``."""
    return {**os.environ, **QUIET_ENV, **extra}


def cli(
    *args: str,
    cwd: Path,
    timeout: float = 600,
    env: Mapping[str, str] | None = None,
    beside_ray: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run `slimtune ARGS` in `cwd` as a user would (``env``: added to :func:`cli_env`), and
    return the finished process. ``beside_ray``: a search loads its task beside Ray's start
    whatever the machine's cores (as on 4 cores or more; the 2-core CI machine would not)."""
    command = ["-c", BESIDE_RAY] if beside_ray else ["-m", "orchestrator.cli"]
    return subprocess.run(
        [sys.executable, *command, *args],
        cwd=cwd,
        env=cli_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def e2e_search(tmp_path_factory: pytest.TempPathFactory) -> E2ESearch:
    """The work directory of a finished `slimtune search` of E2E_CONFIG, and its process. It
    loads its task beside Ray's start (``beside_ray``): the one search of the suite that takes
    that path end to end (every other search on the 2-core CI machine takes the other)."""
    work = tmp_path_factory.mktemp("search")
    (work / "c.yaml").write_text(E2E_CONFIG)
    proc = cli("search", "c.yaml", cwd=work, beside_ray=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return work, proc


def python_json(code: str, **env: str) -> Any:
    """What ``code``, run in a fresh Python process at the repository's root (affinities set
    and modules imported there stay there), prints on its last line, as JSON; ``env`` is added
    to this environment. A non-zero exit fails with the process's error output."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
