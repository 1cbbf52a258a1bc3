"""Per-layer compression plans: the uniform plan gives the same artifacts as before plans; a
mixed plan exports a real per-layer artifact that the check verifies layer by layer, and the
allocator picks formats under a budget from a recorded sensitivity table."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from searchspace import ConfigError, SearchSpec, TrialParams
from trials import (
    PLAN_JSON,
    CompressionPlan,
    ExportClaimError,
    LayerOption,
    LayerSetting,
    LayerTable,
    RungReport,
    Task,
    TrialRecord,
    TrialResult,
    TrialSettings,
    allocate,
    check_plan_export,
    file_sha256,
    library_versions,
    run_trial,
)
from trials._artifact_weights import weight_census

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import uniform_plan_cases as cases  # noqa: E402

sys.path.remove(str(HERE))

SPEC = SearchSpec.model_validate({"experiment": "plan", "task": "trials_tiny_task:TinyDigits"})


def test_uniform_plans_give_the_artifacts_of_the_code_before_plans(
    tiny_task: Task, tmp_path: Path
) -> None:
    """sha256 of artifacts recorded with the pre-plan code (same libraries, 1 torch thread,
    the same kind of CPU: its float kernels decide the trained weights' last bits)."""
    recorded = json.loads((HERE / "data" / "uniform_plan_sha256.json").read_text())
    here = library_versions()
    drift = {k: (v, here.get(k)) for k, v in recorded["versions"].items() if here.get(k) != v}
    if drift:
        pytest.skip(f"the fingerprints were recorded with other library versions: {drift}")
    expected = recorded["sha256"].get(cases.cpu_key())
    if expected is None:
        pytest.skip(
            f"no fingerprint was recorded on this kind of CPU ({cases.cpu_key()!r}; recorded: "
            f"{sorted(recorded['sha256'])}): record one with tests/trials/record_uniform_plan.py"
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(recorded["torch_threads"])
    try:
        for name, params in cases.CASES.items():
            settings = cases.settings(tmp_path / "cache", tmp_path / name)
            result = run_trial(tiny_task, params, settings)
            assert file_sha256(result.onnx_path) == expected[name], name
            assert result.tags["plan"] == "uniform"
    finally:
        torch.set_num_threads(threads)


def test_plan_round_trips_and_rejects_bad_settings() -> None:
    plan = CompressionPlan(
        (("0", LayerSetting("int8")), ("fc", LayerSetting("int4", 0.5))),
        kind="mixed",
        budget=0.4,
        predicted_bytes=1000,
        predicted_loss=0.01,
    )
    assert CompressionPlan.from_dict(json.loads(plan.to_json())) == plan
    assert plan.histogram() == "int8:1,int4:1" and plan.uniform_bits is None
    assert CompressionPlan.uniform(["a", "b"], 8).uniform_bits == 8
    with pytest.raises(ConfigError, match=r"plan\.format.*int3"):
        LayerSetting("int3")
    with pytest.raises(ConfigError, match=r"plan\.budget"):
        CompressionPlan((("a", LayerSetting("fp32")),), budget=1.5)
    with pytest.raises(ConfigError, match="each layer appears once"):
        CompressionPlan((("a", LayerSetting("fp32")), ("a", LayerSetting("int8"))))
    with pytest.raises(ValueError, match="budget"):
        TrialParams(lr=1e-3, batch_size=32, sparsity=0.0, bits=8, plan="mixed", budget=0.0)


# A sensitivity table as a search recorded it (tiny digits, int8 u8s8-per-channel and int4):
# relative output error per layer and format, and each layer's bytes per format.
RECORDED = {
    "0": {"fp32": (0.0, 320), "int8": (2.1e-5, 1152), "int4": (6.4e-3, 260)},
    "3": {"fp32": (0.0, 4672), "int8": (4.0e-5, 2280), "int4": (9.1e-3, 760)},
    "6": {"fp32": (0.0, 131584), "int8": (1.2e-5, 34560), "int4": (2.2e-3, 18176)},
    "8": {"fp32": (0.0, 5160), "int8": (3.3e-4, 2410), "int4": (4.0e-2, 1000)},
}


def _tables() -> list[LayerTable]:
    return [
        LayerTable(name, tuple(LayerOption(f, loss, b) for f, (loss, b) in options.items()))
        for name, options in RECORDED.items()
    ]


def test_the_allocator_meets_the_budget_greedily_by_loss_per_byte() -> None:
    dense = 2000 + sum(opts["fp32"][1] for opts in RECORDED.values())
    loose = allocate(_tables(), fixed_bytes=2000, target_bytes=0.5 * dense)
    # The big Linear saves the most bytes per unit of loss: it goes to int8 first, and that
    # alone meets half the dense size; a layer whose int8 is larger than fp32 never moves.
    assert dict(loose.formats) == {"0": "fp32", "3": "fp32", "6": "int8", "8": "fp32"}
    assert loose.reached and loose.predicted_bytes <= 0.5 * dense
    assert loose.moves == ("6->int8",)
    tight = allocate(_tables(), fixed_bytes=2000, target_bytes=0.2 * dense)
    assert tight.reached and tight.predicted_bytes <= 0.2 * dense
    assert tight.formats["6"] == "int4" and tight.predicted_loss > loose.predicted_loss
    assert tight.formats["8"] != "int4"  # the most sensitive layer is the last to go to int4
    impossible = allocate(_tables(), fixed_bytes=2000, target_bytes=3000)
    assert not impossible.reached
    assert set(impossible.formats.values()) == {"int4"}  # the cheapest plan there is
    assert impossible.predicted_bytes == 2000 + 260 + 760 + 18176 + 1000


def _mixed_settings(cache: Path, work: Path) -> TrialSettings:
    return dataclasses.replace(cases.settings(cache, work), int8_format="s8s8-per-channel")


MIXED = TrialParams(
    lr=1e-3, batch_size=32, sparsity=0.3, bits=8, plan="mixed", budget=0.2, quant_scheme="ptq"
)


@pytest.fixture(scope="module")
def mixed(
    tiny_task: Task, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrialSettings, TrialResult]:
    root = tmp_path_factory.mktemp("mixed")
    settings = _mixed_settings(root / "cache", root / "work")
    return settings, run_trial(tiny_task, MIXED, settings)


def test_a_mixed_plan_round_trips_config_artifact_record_rebuild(
    tiny_task: Task, mixed: tuple[TrialSettings, TrialResult], tmp_path: Path
) -> None:
    settings, result = mixed
    plan = CompressionPlan.from_dict(json.loads((settings.work_dir / PLAN_JSON).read_text()))
    assert plan.kind == "mixed" and plan.budget == 0.2 and plan.uniform_bits is None
    assert len(set(plan.formats())) >= 2, plan.histogram()
    assert result.tags["plan_formats"] == plan.histogram()
    assert result.tags["export_check"] == "ok"
    size = result.metrics["size_bytes"]
    assert plan.predicted_bytes is not None
    assert abs(plan.predicted_bytes - size) / size <= 0.10  # the 10 % target
    assert int(result.tags["plan_measured_bytes"]) == int(size)
    assert plan.target_bytes is not None and plan.predicted_bytes <= plan.target_bytes
    assert result.tags["plan_budget_met"] == "true"
    # The artifact holds each layer in its planned format, read from the file.
    stored = dict(p.split("=") for p in result.tags["export_check_summary"][5:].split(","))
    assert stored == dict(zip(plan.names, plan.formats(), strict=True))
    record = TrialRecord.of(SPEC, 1, MIXED, settings, result, torch_threads=1, baseline_threads=1)
    back = TrialRecord.from_json(record.to_json(), source="test")
    assert back.params == MIXED and back.lineage is not None
    assert back.lineage.plan == plan.to_dict()
    # Rebuild on a clean sensitivity cache: the sensitivity is measured again, same plan, same
    # bytes.
    shutil.rmtree(settings.cache_dir / "sensitivity")
    again = run_trial(
        tiny_task,
        back.params,
        back.rebuild_settings(work_dir=tmp_path / "rebuilt", cache_dir=settings.cache_dir),
    )
    assert again.lineage is not None and again.lineage.plan == back.lineage.plan
    assert file_sha256(again.onnx_path) == back.onnx_sha256


def test_the_per_layer_check_fails_on_an_artifact_that_does_not_hold_the_plan(
    mixed: tuple[TrialSettings, TrialResult], tmp_path: Path
) -> None:
    settings, result = mixed
    plan = CompressionPlan.from_dict(json.loads((settings.work_dir / PLAN_JSON).read_text()))
    name, setting = next((n, s) for n, s in plan.layers if s.format != "fp32")
    other = "int4" if setting.format == "int8" else "int8"
    claimed = CompressionPlan(
        tuple((n, LayerSetting(other) if n == name else s) for n, s in plan.layers),
        kind="mixed",
    )
    with pytest.raises(ExportClaimError, match=f"layer '{name}' is stored as {other}"):
        check_plan_export(result.onnx_path, claimed, int8_format=None, what="test")
    units = int(result.metrics["output_units"])
    check_plan_export(result.onnx_path, plan, int8_format=None, what="test", units=units)
    with pytest.raises(ExportClaimError, match=f"structured pruning is claimed: {units - 8}"):
        check_plan_export(result.onnx_path, plan, int8_format=None, what="test", units=units - 8)
    # Tamper with the file: the layer's weight turned back into a plain fp32 initializer.
    model = onnx.load(str(result.onnx_path))
    census = {w.name: w for w in weight_census(model).weights}
    target = next(w for w in census if w.startswith(f"{name}.weight"))
    for init in model.graph.initializer:
        if init.name == target:
            values = np.zeros(tuple(init.dims), dtype=np.float32)
            init.CopyFrom(numpy_helper.from_array(values, target))
    tampered = tmp_path / "tampered.onnx"
    onnx.save_model(model, str(tampered))
    with pytest.raises(ExportClaimError, match=f"layer '{name}' is stored as {setting.format}"):
        check_plan_export(tampered, plan, int8_format=None, what="test")


def test_a_mixed_ptq_trial_measures_its_plan_first_under_early_stopping(
    tiny_task: Task, tmp_path: Path
) -> None:
    """The early (untrained) artifact is the mixed plan's: same bytes as the final one; ptq's
    last rung reports the accuracy of the weights rounded per layer, as the final model's."""
    reports: list[RungReport] = []
    settings = _mixed_settings(tmp_path / "cache", tmp_path / "work")
    result = run_trial(tiny_task, MIXED, settings, rungs=reports.append)
    assert result.tags["plan"] == "mixed" and result.tags["plan_formats"].count(":") > 1
    assert result.metrics["early_size_bytes"] == result.metrics["size_bytes"]
    assert [r.epoch for r in reports] == [0, 1]
    assert reports[-1].metrics["torch_accuracy"] == result.metrics["torch_accuracy"]
