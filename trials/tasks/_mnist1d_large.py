"""A larger MNIST-1D task for GPU trials: ten times the samples and a CNN twice as wide."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trials.tasks._mnist1d import DEFAULT_ARGS, Mnist1dTask

# 40000 samples generated like the default 5000 (same seed and transforms), split 95/5:
# 38000 training and 2000 validation samples. The validation set stays small on purpose:
# every trial measures accuracy by running its ONNX file over it on the CPU.
LARGE_ARGS: dict[str, Any] = {**DEFAULT_ARGS, "num_samples": 40000, "train_split": 0.95}


class Mnist1dLargeTask(Mnist1dTask):
    """MNIST-1D at 40000 samples (38000 train / 2000 validation) with a 1D CNN twice as wide as
    ``mnist1d``'s (~8.1 M parameters, ~110 M multiply-adds per sample): a task that needs a GPU
    to train, made for GPU trials (``resources.gpu``) and for measuring how they pack.

    Fine-tuning one epoch is ~38000 x 110 M x 3 multiply-adds: about 2.5 minutes on one CPU
    core of the 2-core development machine (4.2 ms per sample), seconds on a GPU. Export and
    measurement stay on the CPU: its fp32 ONNX file is ~32 MB and runs in ~1.7 ms at batch 1
    on one thread. The data are generated once (about half a minute) and cached like
    ``mnist1d``'s, in the same directory under another key.
    """

    name = "mnist1d-large"
    baseline_epochs = 10
    baseline_lr = 1e-3
    baseline_batch_size = 128
    width_factor = 2

    def __init__(self, data_dir: Path | None = None, args: dict[str, Any] | None = None) -> None:
        super().__init__(data_dir, {**LARGE_ARGS, **(args or {})})
