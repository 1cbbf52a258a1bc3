"""A trial's rebuild record: run_trial is bit-reproducible on CPU, and the record round-trips and
refuses a damaged or newer one with the field and the fix."""

from __future__ import annotations

import copy
import dataclasses
import importlib.metadata
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from searchspace import SearchSpec, TrialParams
from trials import (
    RECORD_SCHEMA_VERSION,
    RecordError,
    Task,
    TrialRecord,
    TrialResult,
    TrialSettings,
    cpu_kind,
    library_versions,
    run_trial,
)

SettingsFactory = Callable[..., TrialSettings]
SPEC = SearchSpec.model_validate({"experiment": "record", "task": "trials_tiny_task:TinyDigits"})
PARAMS = TrialParams(lr=2e-3, batch_size=64, sparsity=0.5, bits=8, distill_weight=0.3)


def _run(
    task: Task, make_settings: SettingsFactory, cache: Path, work: Path
) -> tuple[TrialSettings, TrialResult]:
    settings = dataclasses.replace(make_settings(cache, work, seed=11), baseline_seed=3)
    return settings, run_trial(task, PARAMS, settings)


@pytest.fixture(scope="module")
def twice(
    tiny_task: Task,
    make_settings: SettingsFactory,
    shared_cache: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> list[tuple[TrialSettings, TrialResult]]:
    """The same trial (gradual unstructured pruning, int8, distillation) run twice."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [
            _run(tiny_task, make_settings, shared_cache, tmp_path_factory.mktemp(f"run{i}"))
            for i in range(2)
        ]
    finally:
        torch.set_num_threads(before)


def test_same_seed_and_settings_give_bit_identical_weights_and_file(
    twice: list[tuple[TrialSettings, TrialResult]],
) -> None:
    (_, a), (_, b) = twice
    assert a.lineage is not None and b.lineage is not None
    assert a.lineage == b.lineage  # baseline and compressed weights' SHA-256, pruning log
    assert a.onnx_path.read_bytes() == b.onnx_path.read_bytes()
    for name in ("accuracy", "torch_accuracy", "size_bytes", "size_gzip_bytes"):
        assert a.metrics[name] == b.metrics[name], name


def test_the_lineage_says_which_baseline_and_what_pruning_did(
    twice: list[tuple[TrialSettings, TrialResult]],
) -> None:
    settings, result = twice[0]
    lineage = result.lineage
    assert lineage is not None
    assert settings.dense_seed == lineage.baseline_seed == 3  # the search's, not the trial's 11
    log = lineage.pruning
    assert (log.scheme, log.target) == ("unstructured", PARAMS.sparsity)
    assert log.history[-1] == (log.ramp_steps, PARAMS.sparsity)
    assert 0 < log.ramp_steps < log.total_steps and log.every >= 1
    tag = ",".join(f"{st}:{sp:.3f}" for st, sp in log.history)
    assert result.tags["pruning_history"] == tag
    assert len(lineage.weights_sha256) == len(lineage.baseline_sha256) == 64
    assert lineage.weights_sha256 != lineage.baseline_sha256


def _record(twice: list[tuple[TrialSettings, TrialResult]]) -> TrialRecord:
    settings, result = twice[0]
    return TrialRecord.of(SPEC, 4, PARAMS, settings, result, torch_threads=1, baseline_threads=2)


def test_record_round_trips_and_rebuilds_the_same_settings(
    twice: list[tuple[TrialSettings, TrialResult]], tmp_path: Path
) -> None:
    settings, result = twice[0]
    record = _record(twice)
    text = record.to_json()
    assert len(text) < 8000
    back = TrialRecord.from_json(text, source="test")
    assert back == record
    again = back.rebuild_settings(work_dir=settings.work_dir, cache_dir=settings.cache_dir)
    # `auto` was resolved by timing on this machine: the record pins the format the trial used.
    assert result.lineage is not None and result.lineage.int8_format == result.tags["int8_format"]
    assert again == dataclasses.replace(settings, int8_format=result.lineage.int8_format)
    data = json.loads(text)
    assert data["schema_version"] == RECORD_SCHEMA_VERSION
    assert data["search"]["task"] == "trials_tiny_task:TinyDigits"
    assert data["trial"]["settings"]["seed"] == 11 and data["baseline"]["seed"] == 3
    assert data["outcome"]["size_bytes"] == result.metrics["size_bytes"]
    assert {"python", "torch", "onnx", "onnxruntime", "slimtune"} <= set(data["versions"])
    assert back.version_drift() == []
    assert data["machine"] == dataclasses.asdict(cpu_kind()) and back.cpu == cpu_kind()
    # A record written before the CPU was recorded reads as "not known", not as this CPU.
    del data["machine"]
    assert TrialRecord.from_dict(data, source="test").cpu is None


def test_version_drift_names_the_library_and_the_pin(
    twice: list[tuple[TrialSettings, TrialResult]],
) -> None:
    here = {**library_versions(), "torch": "9.9.9"}
    drift = _record(twice).version_drift(here)
    assert [d.name for d in drift] == ["torch"]
    assert drift[0].pin() == f"torch=={torch.__version__}" and drift[0].here == "9.9.9"


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        data = data[key]
    if value is _DELETE:
        del data[last]
    else:
        data[last] = value


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "field", "words"),
    [
        ("schema_version", RECORD_SCHEMA_VERSION + 1, "schema_version", "upgrade slimtune"),
        ("schema_version", "1", "schema_version", "whole number"),
        ("schema_version", 0, "schema_version", "start at 1"),
        ("kind", "something", "kind", "slimtune.trial-record"),
        ("trial.settings.epochs", -1, "trial.settings.epochs", ">= 0"),
        ("trial.settings.seed", _DELETE, "trial.settings.seed", "required"),
        ("trial.settings.warp_factor", 9, "trial.settings.warp_factor", "upgrade slimtune"),
        ("trial.params.bits", 12, "trial.params", "bits must be one of"),
        ("trial.torch_threads", 1.5, "trial.torch_threads", "whole number"),
        ("search.space.sparsity", 1.5, "search.space.sparsity", "[0, 1)"),
        ("baseline", _DELETE, "baseline", "JSON object"),
        ("outcome.onnx_sha256", "", "outcome.onnx_sha256", "non-empty"),
        ("pruning.target", "lots", "pruning", "numbers"),
        ("machine", "x86_64", "machine", "JSON object"),
        ("machine.key", "", "machine.key", "non-empty"),
        ("machine.model", _DELETE, "machine.model", "non-empty"),
    ],
)
def test_a_damaged_or_newer_record_is_refused_naming_field_and_fix(
    twice: list[tuple[TrialSettings, TrialResult]],
    path: str,
    value: Any,
    field: str,
    words: str,
) -> None:
    data = copy.deepcopy(_record(twice).to_dict())
    _set(data, path, value)
    with pytest.raises(RecordError) as info:
        TrialRecord.from_dict(data, source="run abc")
    message = str(info.value)
    assert info.value.field == field, message
    assert f"field '{field}'" in message and words in message and "Fix:" in message
    assert message.startswith("trial record of run abc:")


def test_text_that_is_not_json_is_refused() -> None:
    with pytest.raises(RecordError, match=r"field '<file>'.*must be JSON.*Fix:"):
        TrialRecord.from_json("{not json", source="run abc")


def test_library_versions_are_read_once_and_handed_out_as_copies() -> None:
    first = library_versions()
    first["torch"] = "0.0.0"  # a caller's change must not leak into later records
    again = library_versions()
    assert again["torch"] == importlib.metadata.version("torch")
    assert again is not first
