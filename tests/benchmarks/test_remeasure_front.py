"""benchmarks/remeasure_front.py: its smoke mode times two ONNX files interleaved and prints the
table (the real run needs a finished search and a quiet machine: benchmarks/BENCHMARKS.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from orchestrator._select_cmd import time_interleaved

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_mode_runs_and_prints_the_table() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "remeasure_front.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "mlp 256" in out.stdout and "mlp 128" in out.stdout and "smoke: ok" in out.stdout


def test_interleaved_timing_gives_every_file_every_round(tmp_path: Path) -> None:
    import torch
    from torch import nn

    paths = []
    for width in (8, 16, 32):
        path = tmp_path / f"m{width}.onnx"
        model = nn.Linear(width, 2).eval()
        torch.onnx.export(model, (torch.zeros(1, width),), str(path), dynamo=False)
        paths.append(path)
    times = time_interleaved(paths, repeats=7, warmup=1)
    assert [len(t) for t in times] == [7, 7, 7]
    assert all(t > 0 for ts in times for t in ts)
