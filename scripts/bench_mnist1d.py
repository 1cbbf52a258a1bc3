"""mnist1d: the dense baseline and a few compressed trials, run directly with trials.run_trial
(not a search), then the artifacts' batch-1 latencies re-timed interleaved so the ratios are fair.

    .venv/bin/python scripts/bench_mnist1d.py [WORK_DIR]     # ~10 min on 2 cores

The baseline and the generated data are cached under WORK_DIR (default /tmp/slimtune-bench).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from searchspace import TrialParams
from trials import Mnist1dTask, TrialSettings, ensure_baseline, run_baseline, run_trial
from trials._measure import _session

CASES = [  # (pruning, sparsity, bits, lr)
    ("structured", 0.5, 8, 1e-3),
    ("structured", 0.5, 32, 1e-3),
    ("unstructured", 0.0, 8, 1e-4),
    ("structured", 0.5, 16, 1e-3),
    ("unstructured", 0.5, 8, 1e-3),
]


def main() -> None:
    torch.set_num_threads(1)
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/slimtune-bench").resolve()
    task = Mnist1dTask(data_dir=root / "data")

    def settings(name: str) -> TrialSettings:
        return TrialSettings(
            epochs=3,
            seed=0,
            cache_dir=root / "cache",
            work_dir=root / name,
            latency_warmup=50,
            latency_repeats=500,
        )

    baseline = ensure_baseline(task, seed=0, cache_dir=root / "cache")
    print("baseline", json.dumps({"accuracy": baseline.accuracy, "s": baseline.train_seconds}))
    files = {"dense": run_baseline(task, settings("dense")).onnx_path}
    for pruning, sparsity, bits, lr in CASES:
        name = f"{pruning}-{sparsity}-{bits}"
        params = TrialParams(lr=lr, batch_size=64, sparsity=sparsity, bits=bits, pruning=pruning)
        result = run_trial(task, params, settings(name))
        print(name, json.dumps({k: result.metrics[k] for k in ("accuracy", "size_bytes")}))
        files[name] = result.onnx_path

    # Interleaved re-timing: 10 rounds, each timing every file 100 times (one thread, batch 1).
    example = task.example_input().numpy()
    sessions = {k: _session(p, threads=1) for k, p in files.items()}
    times: dict[str, list[float]] = {k: [] for k in files}
    for session in sessions.values():
        for _ in range(50):
            session.run(None, {"input": example})
    for _ in range(10):
        for name, session in sessions.items():
            for _ in range(100):
                start = time.perf_counter_ns()
                session.run(None, {"input": example})
                times[name].append((time.perf_counter_ns() - start) / 1e6)
    dense_ms = float(np.median(times["dense"]))
    dense_size = files["dense"].stat().st_size
    for name, values in times.items():
        median = float(np.median(values))
        size = files[name].stat().st_size
        print(
            f"{name:24s} median {median:.3f} ms  p90 {np.percentile(values, 90):.3f} ms  "
            f"size {size:>9d}  smaller {dense_size / size:5.2f}x  faster {dense_ms / median:5.2f}x"
        )


if __name__ == "__main__":
    main()
