"""A small task for the trials tests: a small CNN on sklearn's digits, trained in well under a
second. Importable by module path (the concurrency test loads it in fresh processes)."""

from __future__ import annotations

from torch import Tensor, nn

from trials import DigitsTask, Task


class TinyDigits(Task):
    """Digits with a CNN of ~35k parameters, most of them in one Linear layer so that the int8
    file's size is dominated by weights, not by ONNX overhead."""

    name = "tiny-digits"
    baseline_epochs = 3
    baseline_lr = 3e-3
    baseline_batch_size = 32

    def __init__(self) -> None:
        self._digits = DigitsTask()

    def build_model(self) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16 * 4 * 4, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )

    def train_data(self) -> tuple[Tensor, Tensor]:
        x, y = self._digits.train_data()
        return x[:800], y[:800]

    def val_data(self) -> tuple[Tensor, Tensor]:
        return self._digits.val_data()
