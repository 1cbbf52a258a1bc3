"""Seeded mini-batch training and batched prediction in PyTorch."""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trials._errors import TrainingDivergedError


def fit(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    what: str,
) -> float:
    """Train ``model`` with Adam and cross-entropy; return the seconds it took.

    Shuffling uses its own ``torch.Generator`` seeded by ``seed``, so two calls with the same
    arguments see the same batches. ``what`` names the run in error messages.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(x)
    start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        for step, first in enumerate(range(0, n, batch_size)):
            idx = order[first : first + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingDivergedError(
                    f"{what}: the training loss must stay finite, but it was {value} at epoch "
                    f"{epoch + 1}, step {step + 1} (lr={lr}, batch_size={batch_size}). "
                    "Fix: lower the learning rate (e.g. narrow the lr range of the search space)."
                )
            loss.backward()
            optimizer.step()
    model.eval()
    return time.perf_counter() - start


def predict(model: nn.Module, x: Tensor, *, batch_size: int = 256) -> np.ndarray:
    """The model's outputs on ``x`` in eval mode, as a float32 array."""
    model.eval()
    outputs = []
    with torch.no_grad():
        for first in range(0, len(x), batch_size):
            outputs.append(model(x[first : first + batch_size]).float().numpy())
    return np.concatenate(outputs)
