"""Non-finite task data (NaN or inf in a plugin's inputs or labels) is caught by the task data
checks, naming the split, the count and the first sample (issue 15 item 10)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from trials import TaskError
from trials._task import Task, checked_data


class _Data(Task):
    name = "finite-check"

    def __init__(self, train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor]) -> None:
        self._train, self._val = train, val

    def build_model(self) -> nn.Module:
        return nn.Linear(4, 3)

    def train_data(self) -> tuple[Tensor, Tensor]:
        return self._train

    def val_data(self) -> tuple[Tensor, Tensor]:
        return self._val


def _clean(n: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(n)
    return torch.rand(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("which", ["train", "val"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_inputs_are_named_with_split_and_sample(which: str, value: float) -> None:
    x, y = _clean(20)
    x[7, 2] = value
    x[11, 0] = value
    splits = (
        {"train": (x, y), "val": _clean(8)}
        if which == "train"
        else {
            "train": _clean(20),
            "val": (x, y),
        }
    )
    task = _Data(splits["train"], splits["val"])
    other = "val" if which == "train" else "train"
    checked_data(task, other)  # the clean split passes
    with pytest.raises(TaskError) as info:
        checked_data(task, which)
    msg = str(info.value)
    assert f"{which}_data() inputs" in msg and f"of the {which} split" in msg
    assert "2 non-finite value(s)" in msg and "2 sample(s)" in msg and "sample 7" in msg
    assert ("NaN" if value != value else "inf") in msg and "Fix:" in msg


def test_non_finite_float_labels_are_named_before_their_dtype() -> None:
    x, _ = _clean(10)
    y = torch.zeros(10)
    y[3] = float("nan")
    with pytest.raises(TaskError, match=r"labels hold 1 non-finite value\(s\) \(NaN\)"):
        checked_data(_Data((x, y), _clean(4)), "train")


def test_non_finite_values_in_image_shaped_inputs_name_the_sample() -> None:
    x = torch.rand(6, 1, 4, 4)
    x[5, 0, 3, 3] = float("inf")
    with pytest.raises(TaskError, match="first in sample 5"):
        checked_data(_Data((x, torch.zeros(6, dtype=torch.int64)), _clean(4)), "train")
