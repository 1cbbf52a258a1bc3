"""Where a trial trains: the device, its one-time set-up in a process, and the training data
kept on it.

A trial trains on ``"cpu"`` or on a CUDA device (``"cuda"``, ``"cuda:N"``); export and
measurement always run on the CPU (ONNX Runtime's CPU provider). What costs time once per
process is paid once per process: CUDA's context and libraries (``prepare_device``) and the
copy of a task's data onto the device (``device_data``), so a reused Ray actor pays them only
for its first trial.
"""

from __future__ import annotations

import functools
import re
import time
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor

from searchspace import ConfigError
from trials._task import Task, checked_data

_DEVICE_NAME = re.compile(r"^(cpu|cuda(:\d+)?)$")
# Device copies of task data kept per process: (task, split, device) -> tensors. A handful
# of entries: one search uses one task on one device.
_MAX_CACHED = 4
_cached: dict[tuple[int, str, str], tuple[Task, Tensor, Tensor]] = {}


def check_device_name(value: object, *, source: str) -> str:
    """``value`` if it names a device a trial can train on (``cpu``, ``cuda``, ``cuda:N``),
    else a ConfigError naming the field ``device``. Availability is checked later, where the
    trial runs (``training_device``)."""
    if not isinstance(value, str) or not _DEVICE_NAME.match(value):
        raise ConfigError(
            field="device",
            value=value,
            rule="it must be 'cpu', 'cuda' or 'cuda:N' (N a GPU index)",
            fix="pass device='cuda' to train on the GPU the process sees, or 'cpu'",
            source=source,
        )
    return value


def training_device(name: str) -> torch.device:
    """The torch device ``name`` stands for, checked to exist in this process."""
    device = torch.device(check_device_name(name, source="training_device"))
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ConfigError(
            field="device",
            value=name,
            rule=(
                "a CUDA device must be visible to the process that trains, but "
                f"torch.cuda.is_available() is False here (torch {torch.__version__}, "
                f"built for CUDA {torch.version.cuda})"
            ),
            fix="set `resources: {gpu: 0}` to train on CPUs, or run trials where a CUDA build "
            "of torch sees a GPU (Ray gives a trial its GPUs only when resources.gpu > 0)",
            source="TrialSettings",
        )
    index = device.index if device.index is not None else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(
            field="device",
            value=name,
            rule=f"the GPU index must be below the {torch.cuda.device_count()} GPUs visible here",
            fix="pass device='cuda' (the first visible GPU)",
            source="TrialSettings",
        )
    return torch.device("cuda", index)


def prepare_device(device: torch.device) -> float:
    """Initialise ``device`` once per process (CUDA context, cuBLAS and cuDNN loaded by a
    tiny bf16 Conv1d/Linear step); return the seconds spent by this call: the full cost the
    first time in a process, about 0 after (nothing to do on the CPU)."""
    start = time.perf_counter()
    if device.type == "cuda":
        _warm_cuda(str(device))
    return time.perf_counter() - start


@functools.cache
def _warm_cuda(name: str) -> None:
    device = torch.device(name)
    torch.cuda.init()
    conv = torch.nn.Conv1d(4, 8, 3, padding=1).to(device)
    linear = torch.nn.Linear(8 * 16, 10).to(device)
    x = torch.randn(2, 4, 16, device=device)
    with autocast(device):
        loss = linear(conv(x).flatten(1)).float().square().mean()
    loss.backward()
    torch.cuda.synchronize(device)


def device_data(task: Task, which: str, device: torch.device) -> tuple[Tensor, Tensor]:
    """The task's ``which`` split (``"train"`` or ``"val"``), checked as ``checked_data`` does,
    on ``device``. On the CPU these are the task's own tensors; on a GPU the copy is made once
    per process and task and kept (a reused worker trains every later trial from it)."""
    if device.type == "cpu":
        return checked_data(task, which)
    key = (id(task), which, str(device))
    hit = _cached.get(key)
    if hit is not None and hit[0] is task:
        return hit[1], hit[2]
    x, y = checked_data(task, which)
    x, y = x.to(device), y.to(device)
    while len(_cached) >= _MAX_CACHED:
        _cached.pop(next(iter(_cached)))
    _cached[key] = (task, x, y)
    return x, y


def autocast(device: torch.device) -> AbstractContextManager[object]:
    """bf16 autocast on a GPU (matmuls and convolutions in bfloat16, losses in float32);
    nothing on the CPU, where training stays in float32."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def device_description(device: torch.device) -> str:
    """``cpu``, or the GPU's name (e.g. ``NVIDIA H100 80GB HBM3``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"
