"""``int8_format: auto`` is resolved once per search by its latency meter, before the trials
(orchestrator._int8): real ONNX Runtime, a real Ray actor meter, the digits task."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator._int8 import (
    TIMED_BY,
    _departs,
    check_named_int8_format,
    resolve_int8_format,
)
from orchestrator._latency import GATE_DIR_ENV, MeasureGate, MeterRef, running_meter
from orchestrator._tracking import TrackingTarget
from orchestrator._trainable import TrialContext
from searchspace import INT8_FORMATS, ConfigError, SearchSpec, TrialParams, parse_spec
from trials import (
    Int8Cache,
    Int8Figures,
    Int8Resolution,
    Int8Timing,
    Task,
    TrialSettings,
    cpu_identity,
    faithful_int8_formats,
    int8_subject,
    load_task,
    named_choice,
    refused_int8_formats,
    run_trial,
)

FAST = Int8Timing(rounds=2, warmup=2, runs=5)


def _spec(*, bits: str = "[8, 32]", where: str = "inline", int8: str = "auto") -> SearchSpec:
    return parse_spec(
        f"""
experiment: int8-auto
task: digits
seed: 0
space: {{bits: {{choices: {bits}}}}}
quantization: {{int8_format: {int8}}}
latency: {{where: {where}}}
"""
    )


@pytest.fixture(scope="module")
def digits() -> Task:
    return load_task("digits")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module: the digits baseline trains once."""
    return tmp_path_factory.mktemp("int8-cache")


@pytest.fixture(autouse=True)
def own_gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A gate of this module's own (not the machine's, which other searches share)."""
    gate_dir = tmp_path_factory.mktemp("gate")
    old = os.environ.get(GATE_DIR_ENV)
    os.environ[GATE_DIR_ENV] = str(gate_dir)
    yield gate_dir
    if old is None:
        os.environ.pop(GATE_DIR_ENV, None)
    else:
        os.environ[GATE_DIR_ENV] = old


def _cache_files(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / "int8-format").glob("*.json"))


def test_the_inline_meter_times_once_then_the_cache_answers(digits: Task, tmp_path: Path) -> None:
    spec = _spec()
    meter = MeterRef(where="inline", pause_trials=True)
    first = resolve_int8_format(spec, digits, meter, cache_dir=tmp_path, timing=FAST)
    assert first is not None and first.source == "measured"
    assert set(first.latencies_ms) == set(INT8_FORMATS) and first.format in INT8_FORMATS
    assert first.node  # the host (outside Ray) the meter timed on
    (path,) = _cache_files(tmp_path)
    written = path.read_text()
    data = json.loads(written)
    assert data["key"]["timed_by"] == TIMED_BY and data["key"]["task"] == "digits"
    assert {k: data["key"][k] for k in cpu_identity()} == cpu_identity()
    assert data["chosen"] == first.format and data["latencies_ms"] == first.latencies_ms
    # The kernels were checked too, and the choice is one that computes its own math here.
    assert set(first.deviations) == set(INT8_FORMATS)
    assert data["kernel_deviations"] == {k: float(f"{v:.6g}") for k, v in first.deviations.items()}
    assert first.format in faithful_int8_formats(first.deviations)

    again = resolve_int8_format(spec, digits, meter, cache_dir=tmp_path, timing=FAST)
    assert again is not None and again.source == "cached"
    # Not timed again: the very figures of the first timing, and the file left as it was.
    assert (again.format, again.latencies_ms) == (first.format, first.latencies_ms)
    assert path.read_text() == written


@pytest.mark.parametrize(("bits", "int8"), [("[4, 32]", "auto"), ("[8, 32]", "s8s8-per-channel")])
def test_nothing_is_timed_without_8_bits_or_with_a_named_format(
    digits: Task, tmp_path: Path, bits: str, int8: str
) -> None:
    spec = _spec(bits=bits, int8=int8)
    meter = MeterRef(where="inline", pause_trials=True)
    assert resolve_int8_format(spec, digits, meter, cache_dir=tmp_path, timing=FAST) is None
    if int8 == "auto":  # and a search without 8 bits checks no named format's kernels either
        assert check_named_int8_format(spec, digits, meter, cache_dir=tmp_path) is None
    assert not (tmp_path / "int8-format").exists()


@pytest.mark.parametrize("named", ["u8s8-per-channel", "u8s8-per-channel-reduce-range"])
def test_a_named_format_is_used_as_named_and_its_kernels_are_checked(
    digits: Task, tmp_path: Path, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The search's meter checks the candidates as for ``auto`` (the same cache: auto's
    figures answer, and the other way round); the format stays the named one, and the driver
    warns exactly when this CPU's kernels depart from its math (on x86 without VNNI, the
    full-range formats of the digits MLP do; with VNNI none)."""
    meter = MeterRef(where="inline", pause_trials=True)
    auto = resolve_int8_format(_spec(), digits, meter, cache_dir=tmp_path, timing=FAST)
    choice = check_named_int8_format(
        _spec(int8=named), digits, meter, cache_dir=tmp_path, timing=FAST, out=sys.stdout
    )
    printed = capsys.readouterr().out
    assert auto is not None and choice is not None
    assert (choice.fmt.name, choice.source) == (named, "config")
    assert choice.deviations == auto.deviations and choice.latencies_ms == auto.latencies_ms
    tags = choice.tags()
    assert tags["int8_format"] == named and tags["int8_format_source"] == "config"
    assert set(json.loads(tags["int8_format_kernel_deviation"])) == set(INT8_FORMATS)
    departs = named in refused_int8_formats(choice.deviations)
    assert ("warning: int8 format " + named in printed) == departs, printed
    assert tags.get("int8_format_refused", "") == ",".join(refused_int8_formats(auto.deviations))
    # Reduce-range weights (7 bits) do not saturate: that format computes its math everywhere.
    if named.endswith("reduce-range"):
        assert not departs


def test_the_named_format_warning_names_the_deviation_and_the_formats_that_hold() -> None:
    latencies = {name: 0.1 for name in INT8_FORMATS}
    deviations = {name: 0.0 for name in INT8_FORMATS} | {"u8s8-per-channel": 0.257}
    choice = named_choice("u8s8-per-channel", Int8Figures(latencies, deviations))
    text = _departs(choice)
    assert "int8 format u8s8-per-channel (named in quantization.int8_format)" in text
    assert "by 25.7% of the output" in text
    assert "u8s8-per-channel-reduce-range" in text and "Fix: quantization.int8_format: auto" in text
    assert choice.tags()["int8_format_refused"] == "u8s8-per-channel"
    # Where no format's kernels give a usable output, the fix says where they would.
    everywhere = {name: math.inf for name in INT8_FORMATS}
    text = _departs(named_choice("u8s8-per-channel", Int8Figures(latencies, everywhere)))
    assert "as every format's do here" in text and "on a CPU with VNNI" in text


def test_figures_go_on_as_the_cache_gives_them_back(tmp_path: Path) -> None:
    """A search that measured and one that read the cache decide on, and record, the same
    numbers: the cache keeps a deviation to 6 significant digits, so the measuring search goes
    on with that too (on a CPU without VNNI its full-range formats deviate, 0.04776520473686243
    here, and a named format's figures then differed from auto's by the rounding)."""
    latencies = {name: 0.1 + i / 7 for i, name in enumerate(INT8_FORMATS)}
    deviations = {name: (0.04776520473686243 if "tensor" in name else 0.0) for name in latencies}
    deviations["u8s8-per-channel"] = math.inf
    cache = Int8Cache(tmp_path, {"task": "t", "timed_by": TIMED_BY})
    with cache.locked():
        stored = cache.write(Int8Figures(latencies, deviations), FAST)
        assert stored == cache.read()
    assert stored.latencies_ms == latencies
    assert stored.deviations["u8s8-per-tensor"] == 0.0477652
    assert stored.deviations["u8s8-per-channel"] == math.inf


def test_the_meter_times_the_candidates_with_the_machine_to_itself(
    digits: Task, cache_dir: Path, own_gate: Path
) -> None:
    settings = TrialSettings.for_search(_spec(), seed=0, cache_dir=cache_dir, work_dir=cache_dir)
    subject = int8_subject(digits, settings)
    meter = MeterRef(where="inline", pause_trials=True).connect()
    with meter.working():
        timed = meter.time_candidates(subject.candidates(cache_dir), subject.feed(), FAST)
        # The meter's process holds the gate again once the timing is done.
        with MeasureGate(own_gate).exclusive(timeout_s=0.1) as claim:
            assert not claim.quiet
    assert timed.gate == "exclusive" and timed.gate_wait_ms >= 0
    assert set(timed.figures.latencies_ms) == set(INT8_FORMATS)
    assert all(ms > 0 for ms in timed.figures.latencies_ms.values())
    assert set(timed.figures.deviations) == set(INT8_FORMATS)
    assert all(0 <= d < 1 for d in timed.figures.deviations.values())
    assert timed.cpu.identity == cpu_identity()


def test_the_actor_meter_resolves_on_its_node_and_trials_get_the_choice(
    digits: Task, cache_dir: Path, tmp_path: Path
) -> None:
    import ray

    spec = _spec(where="actor")
    ray_dir = tempfile.mkdtemp(prefix="slimtune-ray-")  # short: Ray's socket paths are limited
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=ray_dir)
    try:
        node = ray.get_runtime_context().get_node_id()
        with running_meter(spec.latency) as meter:
            first = resolve_int8_format(spec, digits, meter, cache_dir=cache_dir, timing=FAST)
            again = resolve_int8_format(spec, digits, meter, cache_dir=cache_dir, timing=FAST)
    finally:
        ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert first is not None and again is not None
    assert (first.source, again.source) == ("measured", "cached")
    assert first.node == again.node == node  # the Ray node the meter actor ran on
    assert (again.format, again.latencies_ms) == (first.format, first.latencies_ms)

    # Every trial of the search gets it through its settings; a trial uses it as it is.
    ctx = TrialContext(
        tracking=TrackingTarget(uri="sqlite:////unused.db", experiment_id="0", parent_run_id="p"),
        runs_dir=tmp_path / "runs",
        cache_dir=cache_dir,
        spec=spec,
        baseline_threads=1,
        int8_auto=first,
    )
    settings = ctx.settings(3)
    assert settings.int8_auto == first and settings.int8_format == "auto"


def test_an_8bit_trial_uses_the_search_choice_and_times_nothing(
    digits: Task, cache_dir: Path, tmp_path: Path
) -> None:
    # A format the timing would not pick on its own: the trial must take it from its settings.
    choice = Int8Resolution(
        "s8s8-per-tensor",
        "cached",
        {name: 1.0 + i for i, name in enumerate(INT8_FORMATS)},
        node="meter-node",
        deviations={**dict.fromkeys(INT8_FORMATS, 0.001), "u8s8-per-channel": 0.2},
    )
    settings = TrialSettings.for_search(
        _spec(), seed=1, cache_dir=cache_dir, work_dir=tmp_path / "trial", int8_auto=choice
    )
    settings = dataclasses.replace(settings, epochs=0, latency_repeats=5)
    before = _cache_files(cache_dir)
    params = TrialParams(lr=1e-3, batch_size=64, sparsity=0.0, bits=8, quant_scheme="ptq")
    result = run_trial(digits, params, settings)
    assert result.tags["int8_format"] == "s8s8-per-tensor"
    assert result.tags["int8_format_source"] == "cached"
    assert result.tags["int8_format_node"] == "meter-node"
    assert json.loads(result.tags["int8_format_latencies_ms"]) == choice.latencies_ms
    assert json.loads(result.tags["int8_format_kernel_deviation"]) == choice.deviations
    assert result.tags["int8_format_refused"] == "u8s8-per-channel"
    assert result.lineage is not None and result.lineage.int8_format == "s8s8-per-tensor"
    assert _cache_files(cache_dir) == before  # the trial timed nothing itself


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"format": "int7"}, "int8_auto.format"),
        ({"source": "config"}, "int8_auto.source"),
        ({"latencies_ms": {"u8s8-per-channel": 1.0}}, "int8_auto.latencies_ms"),
        ({"latencies_ms": dict.fromkeys(INT8_FORMATS, -1.0)}, "int8_auto.latencies_ms."),
        ({"deviations": {}}, "int8_auto.deviations"),
        ({"deviations": dict.fromkeys(INT8_FORMATS, float("nan"))}, "int8_auto.deviations."),
    ],
)
def test_a_bad_resolution_names_its_field(kwargs: dict[str, object], field: str) -> None:
    values: dict[str, object] = {
        "format": INT8_FORMATS[0],
        "source": "measured",
        "latencies_ms": dict.fromkeys(INT8_FORMATS, 1.0),
        "deviations": dict.fromkeys(INT8_FORMATS, 0.0),
        **kwargs,
    }
    with pytest.raises(ConfigError) as info:
        Int8Resolution(**values)  # type: ignore[arg-type]
    assert info.value.field.startswith(field) and "Fix:" in str(info.value)


def test_a_resolution_goes_only_with_auto() -> None:
    choice = Int8Resolution(
        INT8_FORMATS[0],
        "measured",
        dict.fromkeys(INT8_FORMATS, 1.0),
        deviations=dict.fromkeys(INT8_FORMATS, 0.0),
    )
    with pytest.raises(ConfigError) as info:
        TrialSettings(
            epochs=0,
            seed=0,
            cache_dir=Path("/c"),
            work_dir=Path("/w"),
            int8_format=INT8_FORMATS[1],
            int8_auto=choice,
        )
    assert info.value.field == "int8_auto"


def test_the_driver_says_which_formats_the_kernel_check_refused() -> None:
    from orchestrator._int8 import _describe

    deviations = {**dict.fromkeys(INT8_FORMATS, 0.2), "u8s8-per-channel-reduce-range": 0.0}
    resolution = Int8Resolution(
        "u8s8-per-channel-reduce-range",
        "measured",
        dict.fromkeys(INT8_FORMATS, 1.0),
        node="n",
        deviations=deviations,
    )
    text = _describe(resolution)
    assert text.startswith("int8 format (auto): u8s8-per-channel-reduce-range")
    refused = sorted(set(INT8_FORMATS) - {"u8s8-per-channel-reduce-range"})
    assert f"depart from their quantized math (saturating without VNNI): {', '.join(refused)}" in (
        text
    )
    passing = dataclasses.replace(resolution, deviations=dict.fromkeys(INT8_FORMATS, 0.0))
    assert "depart" not in _describe(passing)
