"""The built-in digits task, for real: the model the default search compresses."""

from __future__ import annotations

from pathlib import Path

import pytest

from trials import DigitsTask, TrialSettings, ensure_baseline, run_baseline

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")


def test_digits_baseline_is_accurate_and_has_measurable_latency(tmp_path: Path) -> None:
    task = DigitsTask()
    settings = TrialSettings(
        epochs=3, seed=0, cache_dir=tmp_path / "cache", work_dir=tmp_path / "work"
    )
    baseline = ensure_baseline(task, seed=0, cache_dir=settings.cache_dir)
    assert baseline.accuracy >= 0.95
    result = run_baseline(task, settings)
    assert result.metrics["accuracy"] >= 0.95
    assert result.metrics["accuracy"] == pytest.approx(result.metrics["torch_accuracy"], abs=0.005)
    # The latency objective means something: a few tenths of a ms of work on one thread.
    assert result.metrics["latency_ms"] >= 0.25
    assert result.tags["baseline_cached"] == "true"
