"""An example of your own task: sklearn's wine data (ships with sklearn) and a small MLP.

Run a search on it with the directory of this file on PYTHONPATH, so that the driver and every
Ray worker can import ``my_task``:

    PYTHONPATH=examples/plugin_task slimtune search examples/plugin.yaml

The config names the task as ``my_task:WineTask`` (module ``my_task``, class ``WineTask``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from trials import Split, SplitTask

_SPLIT_SEED = 7  # the split belongs to the task: it never changes between trials


class WineTask(SplitTask):
    """178 wines, 13 chemical measurements, 3 cultivars; a fixed stratified 80/20 split,
    features standardised with the training split's mean and standard deviation."""

    name = "wine-mlp"
    baseline_epochs = 60
    baseline_lr = 3e-3
    baseline_batch_size = 16

    def build_model(self) -> nn.Module:
        return nn.Sequential(
            nn.Linear(13, 128),
            nn.ReLU(),
            nn.Linear(128, 128),
            nn.ReLU(),
            nn.Linear(128, 3),
        )

    def make_split(self) -> Split:
        from sklearn.datasets import load_wine
        from sklearn.model_selection import train_test_split

        data = load_wine()
        x_tr, x_va, y_tr, y_va = train_test_split(
            data.data,
            data.target,
            test_size=0.2,
            stratify=data.target,
            random_state=_SPLIT_SEED,
        )
        mean, std = x_tr.mean(axis=0), x_tr.std(axis=0) + 1e-8

        def inputs(a: np.ndarray) -> Tensor:
            return torch.from_numpy(((a - mean) / std).astype(np.float32))

        def labels(a: np.ndarray) -> Tensor:
            return torch.from_numpy(a.astype(np.int64))

        return (inputs(x_tr), labels(y_tr), inputs(x_va), labels(y_va))
