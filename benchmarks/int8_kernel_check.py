"""What ``int8_format: auto``'s kernel check sees on this CPU, for the built-in tasks' trained
dense models: each int8 format's latency, how far its int8 kernels depart from its own QDQ math,
how far its output is from the fp32 model's, its validation accuracy, and what ``auto`` chooses
with and without the check.

    .venv/bin/python benchmarks/int8_kernel_check.py [--tasks digits mnist1d ...]
        [--workdir DIR] [--out FILE]

Each task's dense baseline is trained (or read from ``--workdir``'s cache) as a search trains
it, quantized in every format with slimtune's own functions, and measured with
``trials.measure_int8_candidates`` (the figures ``auto`` uses: 16 rows, the example input
first). ``vs fp32`` is the same relative norm between the int8 kernels' output and the dense
fp32 file's, over the same rows: the error the artifact carries before any fine-tuning;
``accuracy`` is the task's metric of the file on its validation data (``trials.onnx_accuracy``).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from trials import (
    TrialSettings,
    cpu_identity,
    faithful_int8_formats,
    int8_subject,
    load_task,
    measure_int8_candidates,
    onnx_accuracy,
)
from trials._export import export_onnx
from trials._quantize_auto import Timing, pick


def _outputs(model: bytes | str, rows: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate(
        [np.ravel(session.run(None, {name: rows[i : i + 1]})[0]) for i in range(len(rows))]
    ).astype(np.float64)


def check_task(name: str, workdir: Path) -> list[str]:
    task = load_task(name)
    settings = TrialSettings(epochs=1, seed=0, cache_dir=workdir / "cache", work_dir=workdir / name)
    subject = int8_subject(task, settings)
    scratch = workdir / name
    models = subject.candidates(scratch)
    feed = subject.feed()
    figures = measure_int8_candidates(models, feed, Timing(rounds=3, warmup=10, runs=50))
    fp32 = scratch / "dense.onnx"
    export_onnx(subject.dense, subject.example[:1], fp32, what=f"dense {name}")
    ref = _outputs(str(fp32), feed)
    passed = faithful_int8_formats(figures.deviations)
    lines = [f"## {name} ({len(feed)} rows; fp32 accuracy {onnx_accuracy(fp32, task):.4f})", ""]
    lines.append(
        "| format | median ms | kernels vs own math | kernels vs fp32 | accuracy | passes |"
    )
    lines.append("|---|---:|---:|---:|---:|---|")
    for fmt, model in models.items():
        error = float(np.linalg.norm(_outputs(model, feed) - ref) / np.linalg.norm(ref))
        path = scratch / f"{fmt}.onnx"
        path.write_bytes(model)
        lines.append(
            f"| {fmt} | {figures.latencies_ms[fmt]:.4f} | {figures.deviations[fmt]:.4f} | "
            f"{error:.4f} | {onnx_accuracy(path, task):.4f} | {'yes' if fmt in passed else 'no'} |"
        )
    lines += [
        "",
        f"auto chooses {figures.chosen()} (by latency alone: {pick(figures.latencies_ms)})",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["digits", "mnist1d", "transformer"])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="int8-check-"))
    cpu = cpu_identity()
    lines = [
        f"# int8 kernel check: {cpu['cpu']} ({' '.join(cpu['cpu_isa'])}), onnxruntime "
        f"{cpu['onnxruntime']}, python {platform.python_version()}",
        "",
        f"command: {' '.join([Path(sys.executable).name, *sys.argv])}",
        "",
    ]
    for name in args.tasks:
        lines += check_task(name, workdir)
        print(f"{name}: checked", file=sys.stderr, flush=True)
    text = "\n".join(lines)
    if args.out is not None:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
