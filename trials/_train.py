"""Seeded mini-batch training and batched prediction in PyTorch."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trials._device import autocast
from trials._errors import TrainingDivergedError


@dataclass(frozen=True)
class Distillation:
    """Knowledge distillation from a teacher (the dense model): the loss is
    ``(1 - weight) * CE(student, labels) + weight * T**2 * KL(softmax(teacher / T) ||
    softmax(student / T))`` (Hinton et al., 2015; ``T**2`` keeps the gradient scale)."""

    teacher: nn.Module
    weight: float
    temperature: float


class FitState:
    """Where :func:`fit` stands between two epochs, and where it goes on from.

    ``fit`` keeps it current: the epochs and optimizer steps done, its Adam optimizer and its
    shuffling generator. :meth:`snapshot` is that position as plain tensors and numbers (what a
    trial saves at a rung, ``trials._rung_state``); a ``FitState(saved)`` built from a snapshot
    makes ``fit`` go on after ``saved["epoch"]`` epochs with the optimizer's moments, the
    shuffling order and torch's global random state (dropout) as they were, so that on the
    same device the weights come out as if it had never stopped.
    """

    KEYS = ("epoch", "step", "optimizer", "generator", "torch_rng")

    def __init__(self, saved: Mapping[str, Any] | None = None) -> None:
        if saved is not None and set(saved) != set(self.KEYS):
            raise ValueError(
                f"a saved training position must have exactly the keys {self.KEYS}, got "
                f"{sorted(saved)}"
            )
        self.saved = dict(saved) if saved is not None else None
        self.epoch = int(saved["epoch"]) if saved is not None else 0
        self.step = int(saved["step"]) if saved is not None else 0
        self._optimizer: torch.optim.Optimizer | None = None
        self._generator: torch.Generator | None = None

    def bind(self, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
        """``fit``'s optimizer and generator; a saved position is loaded into them now."""
        self._optimizer, self._generator = optimizer, generator
        if self.saved is not None:
            optimizer.load_state_dict(self.saved["optimizer"])
            generator.set_state(self.saved["generator"])
            torch.set_rng_state(self.saved["torch_rng"])

    def advance(self, epoch: int, step: int) -> None:
        self.epoch, self.step = epoch, step

    def snapshot(self) -> dict[str, Any]:
        if self._optimizer is None or self._generator is None:
            raise RuntimeError("FitState.snapshot() needs fit() to have started with it")
        return {
            "epoch": self.epoch,
            "step": self.step,
            "optimizer": self._optimizer.state_dict(),
            "generator": self._generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }


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
    on_epoch: Callable[[int], None] | None = None,
    state: FitState | None = None,
) -> float:
    """Train ``model`` with Adam and cross-entropy on the device ``x`` lives on; return the
    seconds it took.

    Shuffling uses its own ``torch.Generator`` seeded by ``seed``, so two calls with the same
    arguments see the same batches (on any device). ``what`` names the run in error messages.
    ``on_step(step, total_steps)`` is called before each step's forward pass (gradual pruning
    uses it); ``distill`` adds a distillation term from a teacher model (kept in eval mode).
    ``on_epoch(epochs_done)`` is called after each epoch, its losses checked (a search's rung
    reports use it; it may raise to stop the training). ``state`` (a :class:`FitState`) is kept
    at the position of the last epoch done; one built from a snapshot makes ``fit`` go on from
    there (a trial resumed at its rung).

    With ``x`` and ``y`` on a GPU, the model (and the teacher) move there for training, under
    bf16 autocast with a fused Adam, and come back to where they were; the loss is checked for
    NaN/inf once per epoch rather than per step, so that the GPU is never waited on inside an
    epoch (the error still names the first bad step). On the CPU nothing changes: float32,
    the loss checked after every step.
    """
    device = x.device
    on_gpu = device.type == "cuda"
    home = next((p.device for p in model.parameters()), torch.device("cpu"))
    teacher = distill.teacher if distill is not None else None
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    generator = torch.Generator().manual_seed(seed)
    # fused: one kernel per step on a GPU; None keeps the CPU default (unchanged results).
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True if on_gpu else None)
    state = state if state is not None else FitState()
    state.bind(optimizer, generator)
    n = len(x)
    per_epoch = steps_per_epoch(n, batch_size)
    losses = _LossCheck(what, lr=lr, batch_size=batch_size, every=per_epoch if on_gpu else 1)
    global_step = state.step
    start = time.perf_counter()
    model.train()
    try:
        for epoch in range(state.epoch, epochs):
            order = torch.randperm(n, generator=generator).to(device)
            for step, first in enumerate(range(0, n, batch_size)):
                idx = order[first : first + batch_size]
                if on_step is not None:
                    on_step(global_step, per_epoch * epochs)
                global_step += 1
                optimizer.zero_grad(set_to_none=True)
                with autocast(device):
                    logits = model(x[idx])
                    loss = F.cross_entropy(logits, y[idx])
                    if distill is not None and distill.weight > 0:
                        loss = (1 - distill.weight) * loss + distill.weight * _distill_loss(
                            logits, x[idx], distill
                        )
                losses.add(loss, epoch, step)
                loss.backward()
                optimizer.step()
            state.advance(epoch + 1, global_step)
            if on_epoch is not None:
                losses.flush()
                on_epoch(epoch + 1)
        losses.flush()
        if on_gpu:
            torch.cuda.synchronize(device)
    finally:
        model.eval()
        model.to(home)
        if teacher is not None:
            teacher.to(home)
    return time.perf_counter() - start


class _LossCheck:
    """Raises TrainingDivergedError at the first non-finite loss, looking every ``every``
    steps: 1 reads each loss at once (the CPU); a whole epoch lets a GPU run ahead."""

    def __init__(self, what: str, *, lr: float, batch_size: int, every: int) -> None:
        self.what = what
        self.lr = lr
        self.batch_size = batch_size
        self.every = max(1, every)
        self.pending: list[tuple[Tensor, int, int]] = []

    def add(self, loss: Tensor, epoch: int, step: int) -> None:
        self.pending.append((loss.detach(), epoch, step))
        if len(self.pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        values = torch.stack([loss.float() for loss, _, _ in self.pending]).cpu()
        bad = (~torch.isfinite(values)).nonzero()
        pending, self.pending = self.pending, []
        if len(bad) == 0:
            return
        i = int(bad[0])
        _, epoch, step = pending[i]
        raise TrainingDivergedError(
            f"{self.what}: the training loss must stay finite, but it was {float(values[i])} at "
            f"epoch {epoch + 1}, step {step + 1} (lr={self.lr}, batch_size={self.batch_size}). "
            "Fix: lower the learning rate (e.g. narrow the lr range of the search space)."
        )


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
