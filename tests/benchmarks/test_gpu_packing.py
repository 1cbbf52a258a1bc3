"""The GPU packing benchmark's search configs, its ratios and its run plan (the searches
themselves need a GPU: run by hand, benchmarks/BENCHMARKS.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmarks._packing_table import speedups
from benchmarks.gpu_packing import plan_runs, search_config
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
    default = base.get("latency", {}).get("isolation", "auto")
    expected = default if pause is None else ("pause" if pause else "none")
    assert spec.latency.isolation == expected
    # The config's other latency settings survive the override.
    assert spec.latency.repeats == base["latency"]["repeats"]
    assert base.get("latency", {}).get("pause_trials") is None  # the base is not changed


@pytest.mark.parametrize("isolation", ["auto", "pause", "cores", "none"])
def test_packing_config_sets_the_isolation_mode(isolation: str) -> None:
    base = yaml.safe_load(CONFIG.read_text())
    cfg = search_config(base, per_gpu=8, trials=16, cpus=2.0, smoke=False, isolation=isolation)
    spec = SearchSpec.model_validate(cfg)
    assert spec.latency.isolation == isolation
    assert spec.experiment == f"gpu-packing-8-{isolation}"  # one experiment per row


def _row(per_gpu: int, per_hour: float) -> dict[str, float]:
    return {"per_gpu": per_gpu, "trials_per_hour": per_hour}


def test_ratios_are_against_the_one_per_gpu_row_whatever_the_order() -> None:
    rows = [_row(8, 840), _row(1, 210), _row(4, 420)]
    assert speedups(rows) == pytest.approx([4.0, 1.0, 2.0])
    assert speedups([_row(1, 100), _row(8, 250)]) == pytest.approx([1.0, 2.5])
    assert all(x != x for x in speedups([_row(8, 840)]))  # no reference row: nan, not 1.0


def test_the_plan_runs_each_packing_in_each_mode_and_the_reference_once() -> None:
    assert plan_runs([1, 8], ["auto", "pause", "none"]) == [
        (1, "auto"),
        (8, "auto"),
        (8, "pause"),
        (8, "none"),
    ]
    assert plan_runs([8, 1], []) == [(8, None), (1, None)]


def test_the_quiet_check_says_each_trial_and_the_verdict() -> None:
    from benchmarks._quiet_check import Checked, QuietCheck

    held = Checked("3", 1.01, 1.0, "true", 0.0, 0.12)
    off = Checked("5", 1.5, 1.0, "false", 2.0, 0.4)
    check = QuietCheck((held, off))
    assert held.ratio == pytest.approx(1.01) and off.ratio == pytest.approx(1.5)
    assert "median recorded/quiet 1.255" in check.line() and "50% within 3%" in check.line()
    assert check.line().endswith("MISSED")
    assert QuietCheck.of_ratios([1.0, 1.02, 0.99]).line().endswith("MET")
    assert off.line() == (
        "trial 5: recorded 1.5000 ms, quiet 1.0000 ms (1.500); search's measurement: "
        "converged false, remeasured 2, CV 0.400"
    )


def test_the_fixed_cost_splits_at_the_run_line_and_the_trial_window() -> None:
    from types import SimpleNamespace

    from benchmarks._packing_table import summarize
    from benchmarks.gpu_packing import Packing, StartCost

    def run(start: float, end: float, index: int) -> SimpleNamespace:
        info = SimpleNamespace(status="FINISHED", start_time=start * 1e3, end_time=end * 1e3)
        metrics = {"trial_seconds": end - start, "train_seconds": 5.0, "worker_trial_index": index}
        return SimpleNamespace(info=info, data=SimpleNamespace(metrics=metrics, tags={}))

    # Launched at 1000 s; the run line 12 s in; trials 1030-1040 and 1040-1050; exit at 1060.
    runs = [run(1030.0, 1040.0, 1), run(1040.0, 1050.0, 2)]
    packing = Packing(1, 2, 60.0, runs, began=1000.0, run_line_s=12.0)  # type: ignore[arg-type]
    row = summarize(packing, StartCost(3.0, 2.0, 0.5))
    assert row["to_run_line_s"] == 12.0
    assert row["run_line_to_first_s"] == pytest.approx(18.0)
    assert row["after_last_s"] == pytest.approx(10.0)
    parts = row["to_run_line_s"] + row["run_line_to_first_s"] + row["after_last_s"]
    assert parts == pytest.approx(row["wall_s"] - row["window_s"])  # the fixed cost, whole


def test_a_new_worker_start_counts_the_tracking_store_opening() -> None:
    # A trial worker opens the search's sqlite store (MlflowClient: SQLAlchemy and its mappers)
    # before its first trial's run starts, so no trial logs that second: it is start cost.
    from benchmarks.gpu_packing import measure_start_cost

    cost = measure_start_cost("cpu", repeats=1)
    assert cost.imports_s > 0 and cost.store_s > 0
    assert cost.process_s >= cost.imports_s + cost.store_s
