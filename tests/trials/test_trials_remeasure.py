"""A latency that did not converge is measured again through the same meter before the trial
reports it; the trial records what the noise-aware front needs (val_samples, latency_blocks)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from trials import (
    InlineMeter,
    LatencyPlan,
    LatencyReading,
    Task,
    TrialSettings,
    measure_onnx,
)
from trials._export import export_onnx


class ScriptedMeter:
    """Times for real (InlineMeter), then overwrites ``converged`` and ``median_cv`` with a
    script: a busy machine on the first ``busy`` calls."""

    def __init__(self, busy: int) -> None:
        self.busy = busy
        self.calls = 0

    def measure(self, onnx_path: Path, example: np.ndarray, plan: LatencyPlan) -> LatencyReading:
        self.calls += 1
        real = InlineMeter().measure(onnx_path, example, plan)
        noisy = self.calls <= self.busy
        cv = 0.5 + self.calls / 100 if noisy else 0.01
        stats = type(real.stats)(**{**real.stats.__dict__, "median_cv": cv, "converged": not noisy})
        return LatencyReading(stats, real.tags)

    def pause_point(self) -> None:
        return None


@pytest.fixture(scope="module")
def onnx_file(tiny_task: Task, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("remeasure") / "model.onnx"
    export_onnx(tiny_task.build_model().eval(), tiny_task.example_input(), path, what="test")
    return path


def _settings(make: Callable[..., TrialSettings], tmp: Path, **kw: int) -> TrialSettings:
    return make(tmp, tmp, latency_repeats=10, latency_warmup=1, **kw)


def test_unconverged_latency_is_measured_again_and_the_steady_one_kept(
    onnx_file: Path, tiny_task: Task, make_settings: Callable[..., TrialSettings], tmp_path: Path
) -> None:
    meter = ScriptedMeter(busy=1)
    metrics, tags = measure_onnx(
        onnx_file, tiny_task, _settings(make_settings, tmp_path), meter=meter
    )
    assert meter.calls == 2  # default latency_remeasure=2: the second measurement converged
    assert metrics["latency_remeasured"] == 1
    assert tags["latency_converged"] == "true" and metrics["latency_median_cv"] == 0.01
    x_val, _ = tiny_task.val_data()
    assert metrics["val_samples"] == len(x_val)
    assert metrics["latency_blocks"] == metrics["latency_runs"] // 2  # block = repeats // 5


def test_still_unconverged_after_the_remeasurements_is_flagged(
    onnx_file: Path, tiny_task: Task, make_settings: Callable[..., TrialSettings], tmp_path: Path
) -> None:
    meter = ScriptedMeter(busy=10)
    settings = _settings(make_settings, tmp_path, latency_remeasure=3)
    metrics, tags = measure_onnx(onnx_file, tiny_task, settings, meter=meter)
    assert meter.calls == 4 and metrics["latency_remeasured"] == 3
    assert tags["latency_converged"] == "false"
    assert metrics["latency_median_cv"] == pytest.approx(0.51)  # the steadiest of the four kept
    none = _settings(make_settings, tmp_path, latency_remeasure=0)
    meter = ScriptedMeter(busy=10)
    metrics, tags = measure_onnx(onnx_file, tiny_task, none, meter=meter)
    assert meter.calls == 1 and metrics["latency_remeasured"] == 0
