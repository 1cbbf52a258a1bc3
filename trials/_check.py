"""A dry run of a task through every stage of a trial, on a tiny batch, in seconds.

``slimtune validate`` and ``slimtune search`` run it before any trial starts, so that a plugin
that cannot export to ONNX, or whose data has the wrong shape, costs seconds, not a night.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trials._errors import TaskError
from trials._export import INPUT_NAME, export_onnx
from trials._task import Task, checked_data

TINY_BATCH = 4


class TaskCheckError(TaskError):
    """A task failed one step of the dry run. ``step`` names it."""

    def __init__(self, task: str, step: str, message: str) -> None:
        self.task = task
        self.step = step
        super().__init__(f"task {task!r} failed the check at step '{step}': {message}")


@dataclass
class TaskCheck:
    """What the dry run saw: each step with its duration, and the model's shapes."""

    task: str
    steps: list[tuple[str, float]] = field(default_factory=list)
    input_shape: tuple[int, ...] = ()
    num_classes: int = 0
    parameters: int = 0


def check_task(task: Task, *, work_dir: Path | None = None) -> TaskCheck:
    """Run ``task`` through build, data, forward, one training step, export, ONNX Runtime and
    its metric. Raises TaskCheckError naming the step that failed and how to fix it."""
    name = getattr(task, "name", type(task).__name__)
    report = TaskCheck(task=str(name))
    state: dict[str, Any] = {}

    def step(label: str, fn: Callable[[], None]) -> None:
        t0 = time.perf_counter()
        try:
            fn()
        except TaskCheckError:
            raise
        except Exception as exc:  # any failure of user code becomes a named step failure
            raise TaskCheckError(report.task, label, f"{type(exc).__name__}: {exc}") from exc
        report.steps.append((label, time.perf_counter() - t0))

    def build() -> None:
        model = task.build_model()
        if not isinstance(model, nn.Module):
            raise TaskCheckError(
                report.task,
                "build_model",
                f"build_model() must return a torch.nn.Module, got {type(model).__name__}. "
                "Fix: return the model instance.",
            )
        state["model"] = model
        report.parameters = sum(p.numel() for p in model.parameters())

    def data() -> None:
        x, y = checked_data(task, "train")
        xv, yv = checked_data(task, "val")
        if x.shape[1:] != xv.shape[1:]:
            raise TaskCheckError(
                report.task,
                "data",
                f"train and val inputs must have the same per-sample shape, got "
                f"{tuple(x.shape[1:])} and {tuple(xv.shape[1:])}. Fix: preprocess both alike.",
            )
        example = task.example_input()
        if not isinstance(example, Tensor) or tuple(example.shape) != (1, *x.shape[1:]):
            shape = tuple(example.shape) if isinstance(example, Tensor) else type(example).__name__
            raise TaskCheckError(
                report.task,
                "example_input",
                f"example_input() must be a tensor of shape {(1, *x.shape[1:])} (batch 1, "
                f"like the data), got {shape}. Fix: return x[:1] of the validation data.",
            )
        state["x"], state["y"] = x[:TINY_BATCH], y[:TINY_BATCH]
        state["xv"], state["yv"] = xv[:TINY_BATCH], yv[:TINY_BATCH]
        report.input_shape = tuple(x.shape[1:])

    def forward() -> None:
        model = state["model"]
        model.eval()
        with torch.no_grad():
            out = model(state["xv"])
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != len(state["xv"]):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise TaskCheckError(
                report.task,
                "forward",
                f"the model must map a batch of N inputs to logits of shape (N, classes), got "
                f"{shape} for N={len(state['xv'])}. Fix: flatten and end with a Linear layer.",
            )
        classes = int(out.shape[1])
        top = int(max(int(state["y"].max()), int(state["yv"].max())))
        if top >= classes:
            raise TaskCheckError(
                report.task,
                "forward",
                f"labels must be class indices below the model's {classes} outputs, got label "
                f"{top}. Fix: give the last layer at least {top + 1} outputs.",
            )
        report.num_classes = classes

    def train_step() -> None:
        model = state["model"]
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        loss = F.cross_entropy(model(state["x"]), state["y"])
        if not math.isfinite(float(loss.detach())):
            raise TaskCheckError(
                report.task,
                "train_step",
                f"the loss of one training step must be finite, got {float(loss.detach())}. "
                "Fix: check the data for NaN or inf values.",
            )
        loss.backward()
        opt.step()
        model.eval()

    def export_and_run() -> None:
        model = state["model"]
        path = Path(state["dir"]) / "check.onnx"
        export_onnx(model, task.example_input(), path, what=f"task {report.task!r}")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {INPUT_NAME: state["xv"].numpy()})[0]
        with torch.no_grad():
            want = model(state["xv"]).numpy()
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-3, atol=1e-4):
            raise TaskCheckError(
                report.task,
                "onnx_runtime",
                "the exported model must give the PyTorch outputs in ONNX Runtime, but they "
                f"differ by up to {float(np.max(np.abs(got - want))):.3g}. Fix: avoid ops whose "
                "export changes semantics (e.g. in-place updates of buffers in forward).",
            )
        state["logits"] = got

    def metric() -> None:
        value = task.metric(state["logits"], state["yv"].numpy())
        if not isinstance(value, float | int | np.floating) or not math.isfinite(float(value)):
            raise TaskCheckError(
                report.task,
                "metric",
                f"metric() must return a finite number, got {value!r}. Fix: return a Python float.",
            )

    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        state["dir"] = tmp
        for label, fn in [
            ("build_model", build),
            ("data", data),
            ("forward", forward),
            ("train_step", train_step),
            ("export", export_and_run),
            ("metric", metric),
        ]:
            step(label, fn)
    return report
