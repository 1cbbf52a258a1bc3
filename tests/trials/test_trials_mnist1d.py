"""The built-in mnist1d task: data generated offline once, cached on disk, RNG state untouched.

These tests use a 200-sample dataset (generated in ~0.1 s); the full 5000-sample task and its
baseline are measured in the README (training it takes minutes).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import trials.tasks._mnist1d as mnist1d_module
from trials import (
    BUILTIN_TASKS,
    Mnist1dLargeTask,
    Mnist1dSmallTask,
    Mnist1dTask,
    TaskError,
    load_task,
)

SMALL = {"num_samples": 200}


def test_generated_once_then_loaded_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    real = mnist1d_module._generate

    def counting(args: dict[str, Any]) -> dict[str, np.ndarray]:
        calls.append(args)
        return real(args)

    monkeypatch.setattr(mnist1d_module, "_generate", counting)
    first = Mnist1dTask(data_dir=tmp_path, args=SMALL)
    x, y = first.train_data()
    x_val, _y_val = first.val_data()
    assert len(calls) == 1
    assert x.shape == (160, 1, 40) and x_val.shape == (40, 1, 40)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(y.tolist()) <= set(range(10))
    cached = sorted(p.name for p in (tmp_path / "mnist1d").glob("*.npz"))
    assert len(cached) == 1
    # A new instance (another trial, another process) loads the file: no generation.
    second = Mnist1dTask(data_dir=tmp_path, args=SMALL)
    x2, y2 = second.train_data()
    assert len(calls) == 1
    assert torch.equal(x, x2) and torch.equal(y, y2)
    # Other arguments are another data set, in another file.
    Mnist1dTask(data_dir=tmp_path, args={"num_samples": 100}).train_data()
    assert len(calls) == 2
    assert len(list((tmp_path / "mnist1d").glob("*.npz"))) == 2


def test_generation_leaves_the_global_random_state_alone(tmp_path: Path) -> None:
    np.random.seed(123)
    random.seed(123)
    np_state, py_state = np.random.get_state(), random.getstate()
    Mnist1dTask(data_dir=tmp_path, args=SMALL).train_data()  # generates (reseeds inside)
    after_np, after_py = np.random.get_state(), random.getstate()
    assert after_py == py_state
    assert np_state[0] == after_np[0] and np_state[2:] == after_np[2:]
    assert np.array_equal(np_state[1], after_np[1])


def test_builtin_and_model_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIMTUNE_DATA_DIR", str(tmp_path))
    assert "mnist1d" in BUILTIN_TASKS
    task = load_task("mnist1d")
    assert isinstance(task, Mnist1dTask)
    assert task.data_dir == tmp_path.resolve() / "mnist1d"
    model = task.build_model()
    assert model(torch.randn(3, 1, 40)).shape == (3, 10)
    assert 1_000_000 < sum(p.numel() for p in model.parameters()) < 3_000_000


def test_width_factor_scales_every_hidden_width_and_nothing_else(tmp_path: Path) -> None:
    small = Mnist1dTask(data_dir=tmp_path).build_model().state_dict()
    large = Mnist1dLargeTask(data_dir=tmp_path).build_model().state_dict()
    assert list(small) == list(large)

    def doubled(dim: int, n: int) -> int:
        # Conv kernel sizes (dim 2), the input channel (1) and the 10 classes stay.
        return n if dim == 2 or n in (1, 10) else 2 * n

    for key, tensor in small.items():
        expected = [doubled(dim, n) for dim, n in enumerate(tensor.shape)]
        assert list(large[key].shape) == expected, key
    assert sum(t.numel() for t in large.values()) == 8_070_666


def test_small_variant_halves_every_hidden_width(tmp_path: Path) -> None:
    assert isinstance(load_task("mnist1d-small"), Mnist1dSmallTask)
    dense = Mnist1dTask(data_dir=tmp_path).build_model().state_dict()
    small = Mnist1dSmallTask(data_dir=tmp_path).build_model().state_dict()
    assert list(dense) == list(small)

    def halved(dim: int, n: int) -> int:
        return n if dim == 2 or n in (1, 10) else n // 2

    for key, tensor in dense.items():
        assert list(small[key].shape) == [halved(d, n) for d, n in enumerate(tensor.shape)], key
    assert Mnist1dSmallTask(data_dir=tmp_path).args == Mnist1dTask(data_dir=tmp_path).args


@pytest.mark.parametrize("bad", [0, -1, 1 / 256, float("nan"), float("inf"), True, "2"])
def test_width_factor_must_be_a_positive_number(tmp_path: Path, bad: object) -> None:
    class Wider(Mnist1dTask):
        width_factor = bad  # type: ignore[assignment]

    with pytest.raises(TaskError, match=r"'width_factor' attribute of Wider must be a finite"):
        Wider(data_dir=tmp_path)
