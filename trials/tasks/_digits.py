"""The built-in example task: handwritten digits (sklearn's bundled 8x8 images) with a small CNN."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trials._task import Split, SplitTask

# The train/val split is part of the task, not of a trial: its seed never changes.
_SPLIT_SEED = 20240607
_VAL_FRACTION = 0.2


class DigitsTask(SplitTask):
    """sklearn's ``load_digits`` (1797 images, 8x8, 10 classes): no download, ships with sklearn.

    Pixels are scaled to [0, 1] and shaped ``(N, 1, 8, 8)``; a fixed stratified 80/20 split gives
    1437 training and 360 validation images. The CNN (~0.7 M parameters, no BatchNorm) is sized so
    that its fp32 batch-1 latency in ONNX Runtime on one thread is a few tenths of a millisecond:
    enough work for the latency objective to mean something, little enough that a trial fine-tunes
    in seconds on one core.
    """

    name = "digits"
    baseline_epochs = 6
    baseline_lr = 1e-3
    baseline_batch_size = 32

    def build_model(self) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 48, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(48, 96, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(96, 128, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(128, 256, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(256 * 2 * 2, 256),
            nn.ReLU(),
            nn.Linear(256, 10),
        )

    def make_split(self) -> Split:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
        labels = digits.target.astype(np.int64)
        x_tr, x_va, y_tr, y_va = train_test_split(
            images,
            labels,
            test_size=_VAL_FRACTION,
            stratify=labels,
            random_state=_SPLIT_SEED,
        )
        return (
            torch.from_numpy(np.ascontiguousarray(x_tr)),
            torch.from_numpy(np.ascontiguousarray(y_tr)),
            torch.from_numpy(np.ascontiguousarray(x_va)),
            torch.from_numpy(np.ascontiguousarray(y_va)),
        )
