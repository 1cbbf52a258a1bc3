"""The meter-pinning benchmark's parts: its models, its load (one single-threaded process per
core, on that core alone) and the SMT siblings it reads (the run itself: BENCHMARKS.md)."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.meter_pinning import MODELS, load_on, mlp_onnx, siblings


def test_the_models_run_in_onnx_runtime_at_batch_one(tmp_path: Path) -> None:
    for name, widths in MODELS.items():
        session = ort.InferenceSession(str(mlp_onnx(widths, tmp_path / f"{name}.onnx")))
        (out,) = session.run(None, {"x": np.ones((1, widths[0]), np.float32)})
        assert out.shape == (1, widths[-1])


def test_the_load_is_one_thread_per_core_on_that_core_only() -> None:
    core = sorted(os.sched_getaffinity(0))[0]
    with load_on([core]):
        (child,) = mp.active_children()
        tasks = os.listdir(f"/proc/{child.pid}/task")
        # One thread: a BLAS pool in the child would spread over every core, the meter's too.
        assert len(tasks) == 1
        assert os.sched_getaffinity(int(tasks[0])) == {core}
    assert not child.is_alive()


def test_siblings_read_the_cores_topology() -> None:
    core = sorted(os.sched_getaffinity(0))[-1]
    found = siblings(core)
    assert core in found
    assert siblings(10_000) == [10_000]  # no such core: itself
