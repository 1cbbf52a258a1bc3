"""Seeded mini-batch training and batched prediction in PyTorch."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trials._errors import TrainingDivergedError


@dataclass(frozen=True)
class Distillation:
    """Knowledge distillation from a teacher (the dense model): the loss is
    ``(1 - weight) * CE(student, labels) + weight * T**2 * KL(softmax(teacher / T) ||
    softmax(student / T))`` (Hinton et al., 2015; ``T**2`` keeps the gradient scale)."""

    teacher: nn.Module
    weight: float
    temperature: float


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps of one epoch over ``n`` samples (the last batch may be short)."""
    return math.ceil(n / batch_size)


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
    on_step: Callable[[int, int], None] | None = None,
    distill: Distillation | None = None,
) -> float:
    """Train ``model`` with Adam and cross-entropy; return the seconds it took.

    Shuffling uses its own ``torch.Generator`` seeded by ``seed``, so two calls with the same
    arguments see the same batches. ``what`` names the run in error messages. ``on_step(step,
    total_steps)`` is called before each step's forward pass (gradual pruning uses it);
    ``distill`` adds a distillation term from a teacher model (kept in eval mode).
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(x)
    total_steps = epochs * steps_per_epoch(n, batch_size)
    global_step = 0
    start = time.perf_counter()
    if distill is not None:
        distill.teacher.eval()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        for step, first in enumerate(range(0, n, batch_size)):
            idx = order[first : first + batch_size]
            if on_step is not None:
                on_step(global_step, total_steps)
            global_step += 1
            optimizer.zero_grad(set_to_none=True)
            logits = model(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            if distill is not None and distill.weight > 0:
                loss = (1 - distill.weight) * loss + distill.weight * _distill_loss(
                    logits, x[idx], distill
                )
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


def _distill_loss(logits: Tensor, x: Tensor, distill: Distillation) -> Tensor:
    t = distill.temperature
    with torch.no_grad():
        teacher = distill.teacher(x)
    return F.kl_div(
        F.log_softmax(logits / t, dim=1),
        F.log_softmax(teacher / t, dim=1),
        log_target=True,
        reduction="batchmean",
    ) * (t * t)


def predict(model: nn.Module, x: Tensor, *, batch_size: int = 256) -> np.ndarray:
    """The model's outputs on ``x`` in eval mode, as a float32 array."""
    model.eval()
    outputs = []
    with torch.no_grad():
        for first in range(0, len(x), batch_size):
            outputs.append(model(x[first : first + batch_size]).float().numpy())
    return np.concatenate(outputs)
