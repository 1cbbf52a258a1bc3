"""Validation of the values objects a trial takes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from searchspace import ConfigError, TrialParams
from trials import TrialSettings

ABS = Path("/tmp/slimtune-test")


def _settings(**overrides: Any) -> TrialSettings:
    values: dict[str, Any] = {"epochs": 3, "seed": 0, "cache_dir": ABS, "work_dir": ABS}
    values.update(overrides)
    return TrialSettings(**values)


def test_defaults() -> None:
    settings = _settings()
    assert (settings.latency_warmup, settings.latency_repeats, settings.latency_threads) == (
        20,
        200,
        1,
    )
    assert settings.calibration_samples == 256
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.epochs = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("cache_dir", Path("relative"), "absolute"),
        ("work_dir", Path("runs/trial"), "absolute"),
        ("epochs", -1, ">= 0"),
        ("epochs", 2.5, "integer"),
        ("latency_repeats", 4, ">= 5"),
        ("latency_threads", 0, ">= 1"),
        ("latency_warmup", -1, ">= 0"),
        ("calibration_samples", 0, ">= 1"),
        ("seed", "0", "integer"),
        ("seed", True, "integer"),
    ],
)
def test_invalid_settings_name_field_value_and_fix(field: str, value: Any, rule: str) -> None:
    with pytest.raises(ConfigError) as info:
        _settings(**{field: value})
    message = str(info.value)
    assert field in message and rule in message
    assert repr(str(value) if isinstance(value, Path) else value) in message
    assert "Fix:" in message
    assert info.value.field == field


def test_string_paths_become_paths() -> None:
    settings = _settings(cache_dir="/tmp/a", work_dir="/tmp/b")
    assert settings.cache_dir == Path("/tmp/a") and settings.work_dir == Path("/tmp/b")


@pytest.mark.parametrize(
    "bad",
    [
        {"lr": 0.0},
        {"lr": float("nan")},
        {"batch_size": 0},
        {"sparsity": 1.0},
        {"sparsity": -0.1},
        {"bits": 1},
        {"bits": 12},
        {"pruning": "channel"},
        {"distill_weight": 1.5},
        {"distill_temperature": 0.0},
    ],
)
def test_invalid_trial_params(bad: dict[str, Any]) -> None:
    values: dict[str, Any] = {"lr": 1e-3, "batch_size": 32, "sparsity": 0.5, "bits": 8}
    values.update(bad)
    with pytest.raises(ValueError, match=next(iter(bad))):
        TrialParams(**values)
