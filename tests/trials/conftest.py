"""Fixtures of the trials tests: a tiny task, a baseline cache shared by the session, settings.

The tests run with ``--import-mode=importlib``, so the helper module ``trials_tiny_task.py`` next
to this file is imported with its directory put on ``sys.path`` only for the import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import pytest

from trials import Task, TrialSettings

HERE = Path(__file__).resolve().parent

SettingsFactory = Callable[..., TrialSettings]


@pytest.fixture(scope="session")
def tiny_task_class() -> type[Task]:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(HERE))
        module = importlib.import_module("trials_tiny_task")
    cls: type[Task] = module.TinyDigits
    return cls


@pytest.fixture(scope="session")
def tiny_task(tiny_task_class: type[Task]) -> Task:
    return tiny_task_class()


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One baseline cache for the session: the tiny baseline trains once."""
    return tmp_path_factory.mktemp("baseline-cache")


@pytest.fixture(scope="session")
def make_settings() -> SettingsFactory:
    """Settings for fast tests: 2 epochs, 50 latency repeats, 128 calibration samples."""

    def make(cache_dir: Path, work_dir: Path, **overrides: int) -> TrialSettings:
        values: dict[str, int] = {
            "epochs": 2,
            "seed": 0,
            "latency_warmup": 5,
            "latency_repeats": 50,
            "calibration_samples": 128,
        }
        values.update(overrides)
        return TrialSettings(cache_dir=cache_dir, work_dir=work_dir, **values)  # type: ignore[arg-type]

    return make
