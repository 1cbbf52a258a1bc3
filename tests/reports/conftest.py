"""Fixtures of the reports tests: a real MLflow SQLite store with a search in slimtune's layout."""

from __future__ import annotations

import os

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # before mlflow is imported anywhere

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

OBJECTIVES_TAG = "accuracy:maximize,size_gzip_bytes:minimize,latency_ms:minimize"
BASELINE = {
    "baseline_accuracy": 0.985,
    "baseline_size_bytes": 480_000.0,
    "baseline_size_gzip_bytes": 440_000.0,
    "baseline_latency_ms": 2.4,
}

# (lr, batch_size, sparsity, bits, accuracy, size_bytes, size_gzip_bytes, latency_ms)
# Ties and a duplicate on purpose: trials 3 and 4 measure the same; 6 ties 1 on accuracy.
TRIALS: list[tuple[float, int, float, int, float, int, int, float]] = [
    (1e-3, 32, 0.00, 32, 0.980, 480_000, 440_000, 2.40),
    (2e-3, 64, 0.50, 8, 0.970, 125_000, 60_000, 1.10),
    (5e-4, 32, 0.80, 8, 0.940, 125_000, 30_000, 1.05),
    (1e-3, 128, 0.30, 4, 0.955, 70_000, 45_000, 1.60),
    (1e-3, 128, 0.30, 4, 0.955, 70_000, 45_000, 1.60),
    (3e-3, 64, 0.10, 32, 0.975, 480_000, 430_000, 2.30),
    (2e-3, 32, 0.60, 8, 0.970, 125_000, 55_000, 1.20),
    (8e-4, 64, 0.90, 2, 0.850, 40_000, 20_000, 1.70),
    (1e-4, 32, 0.20, 8, 0.960, 125_000, 100_000, 1.00),
    (4e-3, 128, 0.70, 32, 0.960, 480_000, 150_000, 2.50),
    (6e-4, 64, 0.40, 6, 0.930, 95_000, 70_000, 1.90),
]
# A FAILED trial whose metrics would dominate everything: it must never be on the front.
FAILED = (1e-3, 32, 0.50, 8, 0.999, 10_000, 5_000, 0.50)


@dataclass
class Store:
    uri: str
    client: MlflowClient
    experiment: str
    experiment_id: str
    parent_run_id: str
    old_parent_run_id: str
    child_ids: list[str]  # in trial order; the last one FAILED
    failed_id: str
    models: dict[str, bytes]
    baseline: dict[str, float]  # the parent's baseline_* metrics
    data: list[tuple[float, int, float, int, float, int, int, float]]  # TRIALS, then FAILED


def _log_trial(
    client: MlflowClient,
    exp_id: str,
    parent_id: str,
    number: int,
    trial: tuple[float, int, float, int, float, int, int, float],
    model_dir: Path,
    *,
    status: str,
) -> tuple[str, bytes]:
    lr, batch, sparsity, bits, acc, size, gz, lat = trial
    run = client.create_run(
        exp_id,
        tags={
            "mlflow.parentRunId": parent_id,
            "slimtune.role": "trial",
            "slimtune.trial_id": f"t{number:04d}",
            "slimtune.trial_number": str(number),
            "artifact": "simulated" if bits < 8 else "real",
            "format": "fp32" if bits == 32 else f"int{bits}",
        },
        run_name=f"trial-{number}",
    )
    run_id = run.info.run_id
    client.log_batch(
        run_id,
        params=[
            Param("lr", str(lr)),
            Param("batch_size", str(batch)),
            Param("sparsity", str(sparsity)),
            Param("bits", str(bits)),
        ],
        metrics=[
            Metric(k, float(v), 0, 0)
            for k, v in {
                "accuracy": acc,
                "size_bytes": size,
                "size_gzip_bytes": gz,
                "latency_ms": lat,
                "latency_p90_ms": lat * 1.1,
                "train_seconds": 0.5,
            }.items()
        ],
    )
    payload = f"onnx-dummy-{number}".encode()
    path = model_dir / f"{number}" / "model.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(payload)
    client.log_artifact(run_id, str(path), "model")
    if status == "FAILED":
        client.set_tag(run_id, "slimtune.error", "RuntimeError: export failed")
    client.set_terminated(run_id, status)
    return run_id, payload


def build_store(root: Path) -> Store:
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{(root / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(
        "compress-digits", artifact_location=(root / "mlruns").resolve().as_uri()
    )
    client.create_experiment("other", artifact_location=(root / "mlruns2").resolve().as_uri())
    # An older search of the same experiment: load_search must skip it.
    old = client.create_run(
        exp_id,
        start_time=1_000,
        tags={"slimtune.role": "search", "slimtune.objectives": "accuracy:maximize"},
    )
    client.set_terminated(old.info.run_id, "FINISHED")
    parent = client.create_run(
        exp_id,
        start_time=2_000,
        tags={"slimtune.role": "search", "slimtune.objectives": OBJECTIVES_TAG},
    )
    parent_id = parent.info.run_id
    client.log_batch(parent_id, metrics=[Metric(k, v, 0, 0) for k, v in BASELINE.items()])
    child_ids, models = [], {}
    for number, trial in enumerate([*TRIALS, FAILED]):
        status = "FAILED" if number == len(TRIALS) else "FINISHED"
        run_id, payload = _log_trial(
            client, exp_id, parent_id, number, trial, root / "models", status=status
        )
        child_ids.append(run_id)
        models[run_id] = payload
    return Store(
        uri=uri,
        client=client,
        experiment="compress-digits",
        experiment_id=exp_id,
        parent_run_id=parent_id,
        old_parent_run_id=old.info.run_id,
        child_ids=child_ids,
        failed_id=child_ids[-1],
        models=models,
        baseline=dict(BASELINE),
        data=[*TRIALS, FAILED],
    )


@pytest.fixture(scope="session")
def store_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Store]:
    def make(name: str) -> Store:
        return build_store(tmp_path_factory.mktemp(name))

    return make


@pytest.fixture(scope="module")
def search_store(store_factory: Callable[[str], Store]) -> Store:
    """A store the tests of a module share; tests that write to it use their own module."""
    return store_factory("store")


def dominated_brute_force(values: list[list[float]], directions: list[str]) -> list[bool]:
    """True for rows that another row beats: at least as good everywhere, better somewhere."""
    sign = [-1.0 if d == "maximize" else 1.0 for d in directions]
    rows = [[s * v for s, v in zip(sign, row, strict=True)] for row in values]
    out = []
    for i, a in enumerate(rows):
        out.append(
            any(
                all(bj <= aj for aj, bj in zip(a, b, strict=True))
                and any(bj < aj for aj, bj in zip(a, b, strict=True))
                for j, b in enumerate(rows)
                if j != i
            )
        )
    return out


@pytest.fixture
def brute_dominated() -> Callable[[list[list[float]], list[str]], list[bool]]:
    return dominated_brute_force
