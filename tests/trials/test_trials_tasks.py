"""Tasks: the Task defaults, the built-in digits task's data, and load_task's errors."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from searchspace import SlimtuneError
from trials import BUILTIN_TASKS, DigitsTask, Task, TaskError, load_task

MODULE = "slimtune_test_user_tasks"


@pytest.fixture
def user_module(tmp_path: Path, tiny_task_class: type[Task]) -> Iterator[str]:
    """A user's task module, importable as ``slimtune_test_user_tasks``."""
    (tmp_path / f"{MODULE}.py").write_text(
        textwrap.dedent(
            """
            from trials import DigitsTask, Task

            class MyTask(DigitsTask):
                name = "my-task"

            INSTANCE = MyTask()

            def make_task():
                return MyTask()

            def make_nothing():
                return 42

            class NeedsArgs(DigitsTask):
                def __init__(self, size):
                    super().__init__()

            NOT_A_TASK = 3.5

            class Namespace:
                Nested = MyTask
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    yield MODULE
    sys.path.remove(str(tmp_path))
    sys.modules.pop(MODULE, None)


def test_builtin_digits() -> None:
    assert "digits" in BUILTIN_TASKS
    task = load_task("digits")
    assert isinstance(task, DigitsTask) and task.name == "digits"


@pytest.mark.parametrize("attr", ["MyTask", "INSTANCE", "make_task", "Namespace.Nested"])
def test_user_task_by_reference(user_module: str, attr: str) -> None:
    task = load_task(f"{user_module}:{attr}")
    assert isinstance(task, Task) and task.name == "my-task"


@pytest.mark.parametrize(
    ("ref", "step"),
    [
        ("no_such_module_for_slimtune:Task", "module not found"),
        ("{mod}:Missing", "attribute missing"),
        ("{mod}:NOT_A_TASK", "not a Task"),
        ("{mod}:make_nothing", "not a Task"),
        ("{mod}:NeedsArgs", "instantiating the Task class with no arguments"),
        ("not-a-task-name", "built-in task"),
        ("{mod}:", "built-in task"),
    ],
)
def test_load_task_errors_name_the_ref_the_step_and_the_fix(
    user_module: str, ref: str, step: str
) -> None:
    ref = ref.format(mod=user_module)
    with pytest.raises(TaskError) as info:
        load_task(ref)
    message = str(info.value)
    assert repr(ref) in message
    assert step in message
    assert "Fix:" in message
    assert isinstance(info.value, SlimtuneError)


def test_missing_attribute_lists_the_tasks_there(user_module: str) -> None:
    with pytest.raises(TaskError, match="MyTask"):
        load_task(f"{user_module}:MyTsk")


def test_digits_data_split() -> None:
    task = DigitsTask()
    x_train, y_train = task.train_data()
    x_val, y_val = task.val_data()
    assert x_train.shape == (1437, 1, 8, 8) and x_val.shape == (360, 1, 8, 8)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert float(x_train.min()) == 0.0 and float(x_train.max()) == 1.0
    # Stratified: every class has 20 % (+-1) of its images in validation.
    counts = torch.bincount(y_val, minlength=10)
    totals = counts + torch.bincount(y_train, minlength=10)
    assert torch.all((counts - 0.2 * totals).abs() <= 1)
    # Fixed: another instance gives the very same split.
    x2, y2 = DigitsTask().val_data()
    assert torch.equal(x2, x_val) and torch.equal(y2, y_val)
    assert task.example_input().shape == (1, 1, 8, 8)
    assert task.build_model()(x_val[:4]).shape == (4, 10)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in task.build_model().modules())


def test_default_metric_is_top1_accuracy() -> None:
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], dtype=np.float32)
    assert DigitsTask().metric(logits, np.array([1, 0, 0, 1])) == pytest.approx(0.5)


def test_bad_task_data_is_reported(tiny_task_class: type[Task], tmp_path: Path) -> None:
    from trials import ensure_baseline

    class FloatLabels(tiny_task_class):  # type: ignore[valid-type,misc]
        name = "float-labels"

        def train_data(self) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = super().train_data()
            return x, y.float()

    with pytest.raises(TaskError, match=r"int64.*y\.long\(\)"):
        ensure_baseline(FloatLabels(), seed=0, cache_dir=tmp_path)
