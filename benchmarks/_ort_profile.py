"""Where an ONNX file's batch-1 time goes in ONNX Runtime: time per operator type, from ORT's
own profiler (``SessionOptions.enable_profiling``), one thread, as the trials measure."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort


def op_profile(path: Path, *, runs: int = 200, warmup: int = 20) -> dict[str, float]:
    """Microseconds per run spent in each operator type (``Node`` events' ``op_name``), the
    mean over ``warmup + runs`` profiled batch-1 runs (the profiler is on from the session's
    start), sorted largest first."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "prof")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inp = session.get_inputs()[0]
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        shape[0] = 1
        dtype = np.float16 if "float16" in inp.type else np.float32
        feed = {inp.name: np.random.default_rng(0).standard_normal(shape).astype(dtype)}
        for _ in range(warmup + runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            totals[e["args"]["op_name"]] += e["dur"]
    per_run = {op: us / (runs + warmup) for op, us in totals.items()}
    return dict(sorted(per_run.items(), key=lambda kv: -kv[1]))
