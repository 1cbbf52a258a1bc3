"""How a resumed trial's knobs are compared with the params its finished MLflow run logged
(real MLflow SQLite store; the whole resume through Ray is in test_faults.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from orchestrator._replay import differing_params
from searchspace import TrialParams

PARAMS = TrialParams(lr=5e-4, batch_size=128, sparsity=0.25, bits=8)


def _logged_run(tmp_path: Path, params: dict[str, Any]) -> Any:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return client.get_run(run_id)


def test_a_knob_the_run_did_not_log_compares_as_its_default(tmp_path: Path) -> None:
    old = {k: v for k, v in PARAMS.to_dict().items() if k != "quant_scheme"}
    run = _logged_run(tmp_path, old)
    assert differing_params(run, PARAMS) == {}
    ptq = TrialParams(**{**PARAMS.to_dict(), "quant_scheme": "ptq"})
    assert differing_params(run, ptq) == {"quant_scheme": ("qat", "ptq")}


def test_a_missing_knob_without_default_or_another_value_differs(tmp_path: Path) -> None:
    logged = {**PARAMS.to_dict(), "sparsity": 0.5}
    del logged["lr"]
    run = _logged_run(tmp_path, logged)
    assert differing_params(run, PARAMS) == {"lr": (None, 5e-4), "sparsity": ("0.5", 0.25)}
