"""GPU trials packed on one GPU: a real search (real Ray, real MLflow SQLite, CUDA training)
with ``resources.gpu: 0.25``, so that Ray runs four trials at once on one GPU.

Needs a CUDA device (skipped elsewhere). Run it on a GPU machine with
``pytest -m gpu tests/orchestrator/test_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from tests.orchestrator.conftest import cli

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.e2e,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TRIALS = 8
PER_GPU = 4  # resources.gpu = 1 / PER_GPU
CONFIG = f"""
experiment: gpu-packing
task: digits
seed: 0
trials: {TRIALS}
concurrency: {TRIALS}   # more than fit: the GPU fraction must be what limits them
objectives:
  - {{metric: accuracy, direction: maximize}}
  - {{metric: size_gzip_bytes, direction: minimize}}
  - {{metric: latency_ms, direction: minimize}}
space:
  lr: {{low: 1.0e-4, high: 3.0e-3, log: true}}
  batch_size: {{choices: [64, 128]}}
  sparsity: {{low: 0.0, high: 0.8}}
  bits: {{choices: [8, 32]}}
sampler: {{name: random, seed: 0}}
resources: {{cpu: 1, gpu: {1 / PER_GPU}}}
training: {{epochs: 2}}
latency: {{warmup: 5, repeats: 30, threads: 1}}
"""


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Run], str]:
    work = tmp_path_factory.mktemp("gpu-search")
    (work / "c.yaml").write_text(CONFIG)
    proc = cli("search", "c.yaml", cwd=work, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("gpu-packing")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("slimtune.role") == "trial"], proc.stdout


def _most_at_once(runs: list[Run]) -> int:
    """The largest number of trial runs open at the same instant (from MLflow's start and end
    times; an end at the same millisecond as a start does not count as overlap)."""
    events = sorted(
        [(r.info.start_time, 1) for r in runs] + [(r.info.end_time, -1) for r in runs],
        key=lambda e: (e[0], e[1]),
    )
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def test_every_trial_finished_on_cuda(search: tuple[list[Run], str]) -> None:
    runs, stdout = search
    assert len(runs) == TRIALS
    for run in runs:
        assert run.info.status == "FINISHED", run.data.tags.get("slimtune.error")
        assert run.data.tags["device"] == "cuda"
        assert run.data.tags["device_name"] not in ("", "cpu")
        assert 0.5 < run.data.metrics["accuracy"] <= 1.0
    # The driver trained the dense baseline on the GPU as well.
    assert "trained on cuda in" in stdout


def test_a_quarter_gpu_packs_four_trials_and_no_more(search: tuple[list[Run], str]) -> None:
    runs, _ = search
    assert _most_at_once(runs) == PER_GPU


def test_reused_workers_pay_cuda_and_data_set_up_once(search: tuple[list[Run], str]) -> None:
    runs, _ = search
    later = [r for r in runs if r.data.metrics["worker_trial_index"] >= 2]
    assert later, "Ray Tune should reuse the trial actors (reuse_actors=True)"
    for run in later:
        assert run.data.metrics["device_init_seconds"] < 0.05
        assert run.data.metrics["data_seconds"] < 0.05
    pids = {r.data.tags["worker_pid"] for r in runs}
    assert len(pids) < TRIALS
