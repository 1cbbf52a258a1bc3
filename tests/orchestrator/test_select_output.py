"""``slimtune select`` prints the knobs that vary in the search, where the chosen trial stands on
the noise-aware front (its tie group) and a flag on a latency that did not converge."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.entities import Param

from orchestrator.cli import main
from tests.reports.conftest import build_store


def test_select_shows_varying_knobs_the_tie_group_and_the_latency_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = build_store(tmp_path / "store")
    client = store.client
    client.log_batch(
        store.parent_run_id,
        params=[
            Param("space.lr", "{'low': 0.0001, 'high': 0.01, 'log': True}"),
            Param("space.batch_size", "{'choices': [32, 64, 128]}"),
            Param("space.sparsity", "{'low': 0.0, 'high': 0.9, 'log': False}"),
            Param("space.bits", "{'choices': [2, 4, 6, 8, 32]}"),
            Param("space.pruning", "{'choices': ['unstructured', 'structured']}"),
            Param("space.quant_scheme", "qat"),  # fixed: not shown
        ],
    )
    for number, run_id in enumerate(store.child_ids):
        client.log_param(run_id, "pruning", "structured" if number % 2 else "unstructured")
        client.log_param(run_id, "quant_scheme", "qat")
    # Trials 3 and 4 measure the same: a tie group. Trial 4's latency did not converge.
    client.set_tag(store.child_ids[4], "latency_converged", "false")
    client.log_metric(store.child_ids[4], "latency_median_cv", 0.4)

    code = main(["select", store.experiment, "--tracking-uri", store.uri, "--max-size-kb", "80"])
    assert code == 0
    out = capsys.readouterr().out
    chosen = out.split("runner-up")[0]
    # Trial 3 (0.955, 70 KB) is chosen; trial 4 ties it and comes second.
    assert "chosen: trial 3" in chosen
    assert (
        "lr=1.00e-03 batch_size=128 sparsity=0.3 bits=4 pruning=structured format=int4 "
        "artifact=simulated" in chosen
    )
    assert "quant_scheme" not in out
    assert (
        "Pareto front: yes, in the group of trial 3; tied within the tolerances with trials 4"
        in (chosen)
    )
    assert "runner-up: trial 4 lr=1.00e-03" in out
    assert "[latency not converged (block-median CV 0.4)]" in out
