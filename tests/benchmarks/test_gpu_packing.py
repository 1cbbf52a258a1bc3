"""The GPU packing benchmark's search configs (the searches themselves need a GPU: run by hand,
benchmarks/BENCHMARKS.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmarks.gpu_packing import search_config
from searchspace import SearchSpec

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "mnist1d_large_gpu.yaml"


@pytest.mark.parametrize("pause", [None, True, False])
def test_packing_config_is_valid_and_sets_the_gate_only_when_asked(pause: bool | None) -> None:
    base = yaml.safe_load(CONFIG.read_text())
    cfg = search_config(base, per_gpu=8, trials=32, cpus=2.0, smoke=False, pause_trials=pause)
    spec = SearchSpec.model_validate(cfg)
    assert spec.concurrency == 8 and spec.trials == 32
    assert spec.resources.gpu == pytest.approx(0.125) and spec.resources.cpu == 2.0
    assert spec.sampler.name == "random"  # every packing runs the same trials
    expected = base.get("latency", {}).get("pause_trials", True) if pause is None else pause
    assert spec.latency.pause_trials is expected
    # The config's other latency settings survive the override.
    assert spec.latency.repeats == base["latency"]["repeats"]
    assert base.get("latency", {}).get("pause_trials") is None  # the base is not changed
