"""Does rounding structured-pruning widths to a multiple of 8 pay in latency? Batch-1 latency in
ONNX Runtime of models pruned at a few channel ratios, widths rounded (``pruning.round_to: 8``,
the default) vs exact (``round_to: 1``), next to the dense model.

    .venv/bin/python benchmarks/width_rounding.py [--ratios 0.18 0.3 0.45 0.6] [--rounds 7]
        [--runs 200] [--out FILE.md]
    .venv/bin/python benchmarks/width_rounding.py --smoke     # seconds: checks it runs

Models (freshly initialised: latency does not depend on training): MNIST-1D's CNN (the built-in
task's ``build_model``) and a ResNet-style CNN (BatchNorm, residual adds, strided stages 64/128/
256 wide on 32x32 inputs). Each is pruned with slimtune's own ``prune_structured`` and exported
with ``export_onnx``, exactly as a trial does. Latency: one intra-op thread, batch 1,
``--rounds`` interleaved rounds (every file once per round) of 20 warm-up and ``--runs`` timed
runs; a file's figure is the median of its round medians, the spread min-max of the round
medians. Run it on a quiet machine: the figures are ratios of small times.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from trials import Mnist1dTask
from trials._export import export_onnx
from trials._structured import prune_structured


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.skip(x))


def resnet_style(width: int = 64) -> nn.Module:
    """A small ResNet: stem, one residual block per stage (width, 2x, 4x), pool, classifier."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        _Block(width, width, 1),
        _Block(width, 2 * width, 2),
        _Block(2 * width, 4 * width, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, 10),
    )


def models(smoke: bool) -> dict[str, tuple[Callable[[], nn.Module], torch.Tensor]]:
    if smoke:
        return {
            "resnet-style (width 16)": (lambda: resnet_style(16), torch.randn(1, 3, 16, 16)),
        }
    return {
        "mnist1d": (lambda: Mnist1dTask().build_model(), torch.randn(1, 1, 40)),
        "resnet-style": (resnet_style, torch.randn(1, 3, 32, 32)),
    }


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _median_ms(session: ort.InferenceSession, x: np.ndarray, runs: int) -> float:
    feed = {session.get_inputs()[0].name: x}
    for _ in range(20):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.18, 0.3, 0.45, 0.6])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="one small model, one ratio, fast")
    args = parser.parse_args(argv)
    if args.smoke:
        args.ratios, args.rounds, args.runs = [0.3], 1, 5
    torch.set_num_threads(1)
    lines = [
        f"width_rounding.py {' '.join(argv if argv is not None else sys.argv[1:])}",
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"onnxruntime {ort.__version__}, torch {torch.__version__}",
        "",
        "| model | ratio | round_to | widths | size KB | median ms (min-max) | vs dense |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, (build, example) in models(args.smoke).items():
            files: list[tuple[str, str, str, Path]] = []
            torch.manual_seed(0)
            dense = build().eval()
            path = Path(tmp) / f"{len(files)}-{name}.onnx"
            export_onnx(dense, example, path, what=name)
            files.append(("dense", "-", "-", path))
            for ratio in args.ratios:
                for round_to in (8, 1):
                    torch.manual_seed(0)
                    model = build().eval()
                    pruned = prune_structured(model, example, ratio, what=name, round_to=round_to)
                    path = Path(tmp) / f"{len(files)}-{name}.onnx"
                    export_onnx(model, example, path, what=name)
                    widths = "/".join(str(w) for w in pruned.widths[:-1])
                    files.append((f"{ratio:g}", str(round_to), widths, path))
            sessions = [_session(f[3]) for f in files]
            x = example.numpy()
            rounds: list[list[float]] = [[] for _ in files]
            for _ in range(args.rounds):
                for i, session in enumerate(sessions):
                    rounds[i].append(_median_ms(session, x, args.runs))
            dense_ms = statistics.median(rounds[0])
            for (ratio_text, round_to_text, widths, path), times in zip(files, rounds, strict=True):
                ms = statistics.median(times)
                lines.append(
                    f"| {name} | {ratio_text} | {round_to_text} | {widths} | "
                    f"{path.stat().st_size / 1000:.0f} | {ms:.3f} ({min(times):.3f}-"
                    f"{max(times):.3f}) | {dense_ms / ms:.2f}x |"
                )
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
