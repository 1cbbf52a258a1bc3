"""Mixed plans under a latency budget: the per-layer latency table measured in ONNX Runtime by
the meter, the prediction composed from it, the allocator that never pays latency for a slower
format, and the trial that records the table so that a rebuild makes the same plan."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from searchspace import ConfigError, SearchSpec, TrialParams
from trials import (
    PLAN_JSON,
    CompressionPlan,
    InlineMeter,
    LatencyPlan,
    LatencyReading,
    Task,
    TrialRecord,
    TrialSettings,
    file_sha256,
    run_trial,
)
from trials._plan_allocate import Choice, allocate_joint
from trials._plan_latency import ROUND_TRIP, LatencyTable, context_ratio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import uniform_plan_cases as cases  # noqa: E402

sys.path.remove(str(HERE))

SPEC = SearchSpec.model_validate({"experiment": "plan", "task": "trials_tiny_task:TinyDigits"})

TABLE = LatencyTable(
    dense_ms=1.0,
    overhead_ms=0.01,
    layers={
        # a: int8 is faster than fp32, int4 (dequantized to fp32 first) slower.
        "a": {"fp32": 0.21, "int8": 0.06, "int4": 0.41, ROUND_TRIP: 0.02},
        "b": {"fp32": 0.11, "int8": 0.04, "int4": 0.09, ROUND_TRIP: 0.02},
    },
    node="here",
)
CALIBRATED = dataclasses.replace(TABLE, context={"int8": 0.1, "int4": -0.05})


def test_the_latency_prediction_composes_the_measured_layer_times() -> None:
    assert TABLE.predict({"a": "fp32", "b": "fp32"}) == pytest.approx(1.0)
    # a at int8: its own time (less one empty run) replaces its fp32 time.
    assert TABLE.predict({"a": "int8", "b": "fp32"}) == pytest.approx(1.0 - 0.20 + 0.05)
    # b at int8 after a at int8: the quantization between them is done once, not twice.
    both = 1.0 - 0.20 + 0.05 - 0.10 + 0.03 - 0.01
    assert TABLE.predict({"a": "int8", "b": "int8"}) == pytest.approx(both)
    # Half of b's multiply-adds kept (per-layer widths): half its compute.
    assert TABLE.predict({"a": "fp32", "b": "fp32"}, {"b": 0.5}) == pytest.approx(0.95)
    # The whole-model calibration corrects each layer's time at its format by its ratio.
    plan = {"a": "int8", "b": "int4"}
    expected = TABLE.predict(plan) + 0.1 * 0.05 - 0.05 * 0.08
    assert CALIBRATED.predict(plan) == pytest.approx(expected)
    assert CALIBRATED.isolated(plan) == pytest.approx(TABLE.predict(plan))


def test_a_whole_model_timing_below_its_layers_never_gives_a_layer_negative_time() -> None:
    # The layers at int8 take 0.10 ms between them; alone they predict 0.85 ms for the model.
    assert context_ratio(0.86, 0.85, 0.10) == pytest.approx(0.1)  # measured: kept as it is
    # A whole-model timing of 0.50 ms (e.g. a noisy one) would make the layers' time -2.5x:
    # capped at -1, a layer's calibrated time is zero at the least, never negative.
    assert context_ratio(0.50, 0.85, 0.10) == -1.0
    noisy = dataclasses.replace(TABLE, context={"int8": context_ratio(0.50, 0.85, 0.10)})
    # a at int8 saves at most its whole fp32 time (0.20 ms less one empty run), not more.
    assert noisy.predict({"a": "int8", "b": "fp32"}) == pytest.approx(1.0 - 0.20)


def test_narrower_layers_cost_a_fixed_part_and_a_part_per_multiply_add() -> None:
    a = {**TABLE.layers["a"], "fp32@narrow": 0.07, "narrow_share": 0.25, "outputs": 100.0}
    b = {**TABLE.layers["b"], "outputs": 300.0}
    table = dataclasses.replace(TABLE, layers={"a": a, "b": b})
    # a at fp32: 0.20 ms at full width, 0.06 ms at a quarter of its work: a line through both.
    slope = (0.20 - 0.06) / 0.75
    assert table.compute_ms("a", "fp32", 0.5) == pytest.approx(0.20 - slope + slope * 0.5)
    # b has no narrow timing: in proportion.
    assert table.compute_ms("b", "fp32", 0.5) == pytest.approx(0.05)
    # The time outside the layers (1.0 - 0.01 - 0.30) shrinks with b's outputs (3/4 of all).
    fp32 = {"a": "fp32", "b": "fp32"}
    saved = (1.0 - 0.01 - 0.30) * (1 - (100 + 0.5 * 300) / 400)
    assert table.predict(fp32, {"b": 0.5}, {"b": 0.5}) == pytest.approx(1.0 - 0.05 - saved)
    assert LatencyTable.from_dict(json.loads(json.dumps(CALIBRATED.to_dict()))) == CALIBRATED
    assert LatencyTable.from_dict({"version": 99}) is None
    assert LatencyTable.from_dict({"version": 4, "layers": "x"}) is None


def _choices(loss_int4_a: float = 0.001) -> list[Choice]:
    return [
        Choice("format:a", (("fp32", 0.0), ("int8", 0.01), ("int4", loss_int4_a))),
        Choice("format:b", (("fp32", 0.0), ("int8", 0.01), ("int4", 0.005))),
    ]


def _ms(picks: dict[str, object]) -> float:
    return TABLE.predict({"a": str(picks["format:a"]), "b": str(picks["format:b"])})


def test_under_a_latency_budget_a_slower_format_is_never_picked() -> None:
    # int4 on a is the least lossy compression of a, but slower than fp32: never a move.
    loose = allocate_joint(_choices(), _ms, target=0.9)
    assert dict(loose.picks) == {"format:a": "int8", "format:b": "fp32"}
    assert loose.reached and loose.predicted == pytest.approx(0.85)
    impossible = allocate_joint(_choices(), _ms, target=0.1)
    assert not impossible.reached
    assert dict(impossible.picks) == {"format:a": "int8", "format:b": "int8"}
    with pytest.raises(ConfigError, match="target"):
        allocate_joint(_choices(), _ms, target=0.0)


class CountingMeter(InlineMeter):
    """The inline meter, counting the files it times."""

    def __init__(self) -> None:
        self.timed: list[str] = []

    def measure(self, onnx_path: Path, example: np.ndarray, plan: LatencyPlan) -> LatencyReading:
        self.timed.append(onnx_path.name)
        return super().measure(onnx_path, example, plan)


LATENCY = TrialParams(
    lr=1e-3,
    batch_size=32,
    sparsity=0.0,
    bits=8,
    plan="mixed",
    budget=0.9,
    budget_metric="latency",
    quant_scheme="ptq",
)


def _settings(root: Path) -> TrialSettings:
    return dataclasses.replace(
        cases.settings(root / "cache", root / "work"), int8_format="s8s8-per-channel"
    )


def test_a_latency_plan_is_measured_once_recorded_and_rebuilt_from_its_record(
    tiny_task: Task, tmp_path: Path
) -> None:
    settings = _settings(tmp_path)
    meter = CountingMeter()
    result = run_trial(tiny_task, LATENCY, settings, meter=meter)
    plan = CompressionPlan.from_dict(json.loads((settings.work_dir / PLAN_JSON).read_text()))
    assert plan.budget_metric == "latency" and plan.latency_table is not None
    table = LatencyTable.from_dict(plan.latency_table)
    assert table is not None
    # The meter timed each layer alone at fp32, fp16, int8, int4, at half its widths in each
    # (not the first conv: one input channel), and an int8 round trip, an empty run, the whole
    # model dense, at fp16, int8 and int4; then the trial's own artifact.
    assert set(table.layers) == set(plan.names)
    narrowed = [n for n, t in table.layers.items() if "narrow_share" in t]
    assert narrowed == list(plan.names[1:])
    assert meter.timed.count("latency-table.onnx") == 5 * len(plan.names) + 4 * 3 + 5
    assert meter.timed[-1] == "model.onnx"
    assert set(table.context) == {"fp16", "int8", "int4"}
    assert plan.predicted_ms is not None and plan.target_ms == pytest.approx(
        round(0.9 * table.dense_ms, 6)
    )
    assert result.tags["plan_budget_metric"] == "latency"
    assert float(result.tags["plan_predicted_ms"]) == pytest.approx(plan.predicted_ms, rel=1e-5)
    assert float(result.tags["plan_measured_ms"]) == pytest.approx(
        result.metrics["latency_ms"], rel=1e-5
    )
    error = float(result.tags["plan_latency_error"])
    assert error == pytest.approx(
        (plan.predicted_ms - result.metrics["latency_ms"]) / result.metrics["latency_ms"], abs=1e-3
    )
    met = plan.predicted_ms <= plan.target_ms
    assert result.tags["plan_budget_met"].startswith(str(met).lower())
    assert result.tags["export_check"] == "ok"
    # The plan's prediction is the table's, and no slower than the dense model's: each move of
    # the allocator saves predicted latency.
    formats = dict(zip(plan.names, plan.formats(), strict=True))
    assert plan.predicted_ms == pytest.approx(table.predict(formats), abs=1e-6)
    assert plan.predicted_ms <= table.dense_ms

    # A second trial of the search on this machine reads the cached table.
    again_meter = CountingMeter()
    other = dataclasses.replace(
        settings, work_dir=tmp_path / "work2", seed=4, baseline_seed=settings.dense_seed
    )
    run_trial(tiny_task, LATENCY, other, meter=again_meter)
    assert again_meter.timed == ["model.onnx"]

    # The rebuild allocates from the record's table (nothing measured for it, even on an empty
    # cache) and makes the same plan and the same file.
    record = TrialRecord.of(SPEC, 1, LATENCY, settings, result, torch_threads=1, baseline_threads=1)
    back = TrialRecord.from_json(record.to_json(), source="test")
    assert "plan_latency" not in back.settings
    rebuild_settings = back.rebuild_settings(
        work_dir=tmp_path / "rebuilt", cache_dir=tmp_path / "c2"
    )
    assert rebuild_settings.plan_latency == plan.latency_table
    rebuild_meter = CountingMeter()
    rebuilt = run_trial(tiny_task, back.params, rebuild_settings, meter=rebuild_meter)
    assert rebuild_meter.timed == ["model.onnx"]
    assert rebuilt.lineage is not None and back.lineage is not None
    assert rebuilt.lineage.plan == back.lineage.plan
    assert file_sha256(rebuilt.onnx_path) == back.onnx_sha256


def test_a_rebuild_refuses_a_latency_table_it_cannot_read(tiny_task: Task, tmp_path: Path) -> None:
    settings = dataclasses.replace(_settings(tmp_path), plan_latency={"version": 4, "layers": 3})
    with pytest.raises(ConfigError, match="plan_latency"):
        run_trial(tiny_task, LATENCY, settings)


def _widths_only(table: dict[str, Any]) -> dict[str, Any]:
    """``table`` (a measured table's dict) as a machine where no format is faster than fp32
    at any width (each 1.5x its fp32 time, no calibration) and a layer at its narrow width
    takes 30 % of its full time: on it only narrower layers save latency."""
    overhead = float(table["overhead_ms"])
    layers = {}
    for name, times in table["layers"].items():
        fp32 = float(times["fp32"])
        narrow = overhead + 0.3 * (fp32 - overhead)
        entry = dict(times)
        for key in times:
            fmt, _, tail = key.partition("@")
            if fmt in ("fp16", "int8", "int4"):
                entry[key] = 1.5 * (narrow if tail else fp32)
        entry["fp32@narrow"] = narrow
        entry["narrow_share"] = float(times.get("narrow_share", 0.25))
        layers[name] = entry
    return {**table, "layers": layers, "context": {}}


def test_a_latency_plan_with_per_layer_widths_meets_its_target_with_a_real_artifact(
    tiny_task: Task, tmp_path: Path
) -> None:
    params = dataclasses.replace(LATENCY, pruning="structured", budget=0.5)
    result = run_trial(tiny_task, params, _settings(tmp_path))
    plan = CompressionPlan.from_dict(json.loads((tmp_path / "work" / PLAN_JSON).read_text()))
    assert result.tags["export_check"] == "ok"
    assert plan.predicted_ms is not None and plan.target_ms is not None
    met = result.tags["plan_budget_met"]
    assert met == "true" if plan.predicted_ms <= plan.target_ms else met.startswith("false")
    assert "plan_latency_error" in result.tags
    # Whether formats or widths are the cheaper latency depends on the machine's timings: on
    # one (the measured table, changed) where only widths save time, the allocator narrows
    # layers, and the narrower file is real and passes its check.
    assert plan.latency_table is not None
    narrow_only = dataclasses.replace(
        _settings(tmp_path),
        work_dir=tmp_path / "narrow",
        plan_latency=_widths_only(dict(plan.latency_table)),
    )
    narrowed = run_trial(tiny_task, params, narrow_only)
    again = CompressionPlan.from_dict(json.loads((tmp_path / "narrow" / PLAN_JSON).read_text()))
    assert any(s.keep < 1 for _, s in again.layers), again.keep_histogram()
    assert {s.format for _, s in again.layers} == {"fp32"}, again.layers
    assert narrowed.tags["export_check"] == "ok"
    assert narrowed.tags["plan_budget_metric"] == "latency"
