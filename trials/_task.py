"""The task interface: what a user plugs in (a model, its data and its metric)."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import Tensor, nn

from trials._errors import TaskError


class Task(ABC):
    """A model to compress, with its training and validation data and its metric.

    Subclasses set ``name`` and implement the three abstract methods; everything else has a
    default. Data are ``(inputs, labels)`` tensors: float inputs whose first dimension is the
    sample, int64 class labels. ``val_data`` is the held-out set every accuracy is measured on.
    """

    name: str = "task"
    # How the dense baseline is trained once (and cached) before any trial fine-tunes it.
    baseline_epochs: int = 10
    baseline_lr: float = 1e-3
    baseline_batch_size: int = 64

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised model (weights come from the global torch RNG)."""

    @abstractmethod
    def train_data(self) -> tuple[Tensor, Tensor]:
        """Training inputs and int64 labels."""

    @abstractmethod
    def val_data(self) -> tuple[Tensor, Tensor]:
        """Validation inputs and int64 labels: the held-out set of every reported accuracy."""

    def example_input(self) -> Tensor:
        """One input of batch size 1; latency is measured on it."""
        x, _ = self.val_data()
        return x[:1]

    def metric(self, logits: np.ndarray, targets: np.ndarray) -> float:
        """Top-1 accuracy in [0, 1]. Higher must be better."""
        if len(targets) == 0:
            raise TaskError(
                f"task {self.name!r}: the metric needs at least one target, got 0. "
                "Fix: make val_data() return a non-empty set."
            )
        return float(np.mean(np.argmax(logits, axis=1) == targets))

    def fingerprint(self) -> str:
        """Stable hash of what determines the baseline: name, architecture, data shapes and
        the baseline's training settings. The baseline cache is keyed by it.

        Data *values* are not hashed (it would cost a pass over a user's data set); a task whose
        data change without changing shape should override this method or change ``name``.
        """
        x_train, y_train = self.train_data()
        x_val, y_val = self.val_data()
        desc = {
            "name": self.name,
            "model": repr(self.build_model()),
            "data": [[list(t.shape), str(t.dtype)] for t in (x_train, y_train, x_val, y_val)],
            "baseline": [self.baseline_epochs, self.baseline_lr, self.baseline_batch_size],
        }
        blob = json.dumps(desc, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


Split = tuple[Tensor, Tensor, Tensor, Tensor]


class SplitTask(Task):
    """A Task whose data are one fixed train/validation split, made on first use and kept.

    Implement ``make_split`` returning ``(train_x, train_y, val_x, val_y)``; ``train_data`` and
    ``val_data`` serve it, and the split is built once per instance (a reused Ray actor keeps it
    from one trial to the next).
    """

    _split: Split | None = None

    @abstractmethod
    def make_split(self) -> Split:
        """``(train_x, train_y, val_x, val_y)``: float inputs, int64 labels."""

    def train_data(self) -> tuple[Tensor, Tensor]:
        x, y, _, _ = self._cached_split()
        return x, y

    def val_data(self) -> tuple[Tensor, Tensor]:
        _, _, x, y = self._cached_split()
        return x, y

    def _cached_split(self) -> Split:
        if self._split is None:
            self._split = self.make_split()
        return self._split


def checked_data(task: Task, which: str) -> tuple[Tensor, Tensor]:
    """The task's train or val data, checked against the contract, inputs as float32."""
    x, y = task.train_data() if which == "train" else task.val_data()
    where = f"task {task.name!r}: {which}_data()"
    if not (isinstance(x, Tensor) and isinstance(y, Tensor)):
        raise TaskError(
            f"{where} must return a pair of torch Tensors, got "
            f"({type(x).__name__}, {type(y).__name__}). Fix: wrap arrays with torch.from_numpy."
        )
    for name, t in (("inputs", x), ("labels", y)):
        _check_finite(t, name, where, which)
    if not x.is_floating_point():
        raise TaskError(
            f"{where} inputs must be a float tensor, got dtype {x.dtype}. Fix: use x.float()."
        )
    if y.dtype != torch.int64 or y.dim() != 1:
        raise TaskError(
            f"{where} labels must be a 1-D int64 tensor, got dtype {y.dtype} with shape "
            f"{tuple(y.shape)}. Fix: use y.long() with one class index per sample."
        )
    if len(x) != len(y) or len(x) == 0:
        raise TaskError(
            f"{where} must give as many inputs as labels and at least one, got {len(x)} inputs "
            f"and {len(y)} labels. Fix: return matching, non-empty tensors."
        )
    return x.float(), y


def _check_finite(t: Tensor, name: str, where: str, which: str) -> None:
    """NaN or inf in a split is the task's fault: say so here, before training blames the lr."""
    if not t.is_floating_point() and not t.is_complex():
        return  # integers are always finite
    bad = ~torch.isfinite(t)
    if not bool(bad.any()):
        return
    count = int(bad.sum())
    rows = bad.reshape(len(t), -1).any(dim=1) if t.dim() > 0 and len(t) else bad.reshape(-1)
    first = int(torch.nonzero(rows)[0, 0])
    kinds = [k for k, m in (("NaN", torch.isnan(t)), ("inf", torch.isinf(t))) if bool(m.any())]
    raise TaskError(
        f"{where} {name} hold {count:,} non-finite value(s) ({' and '.join(kinds)}) in "
        f"{int(rows.sum()):,} sample(s) of the {which} split, the first in sample {first}. "
        f"Fix: clean the {which} data in the task (drop or impute those samples, e.g. "
        "torch.nan_to_num, and check the preprocessing that made them)."
    )
