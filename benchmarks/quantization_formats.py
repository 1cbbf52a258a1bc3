"""What each bit-width's artifact is in ONNX Runtime on this CPU: file size, batch-1 latency,
what ORT keeps after loading it, and how far its outputs are from PyTorch's.

    .venv/bin/python benchmarks/quantization_formats.py [--task digits|mnist1d] [--rounds 7]
        [--runs 200] [--out FILE.md]

The task's dense model (freshly initialised: size and latency do not depend on training) is
rounded to each format's weight grid, as a trial's fine-tuning leaves it, exported, and quantized
with slimtune's own functions: fp32, fp16, int8 in each ``INT8_FORMATS`` format, int4
(MatMulNBits Linear + int4 DequantizeLinear Conv), and a simulated 3-bit file. Three int4
alternatives are measured for comparison only: int4 DequantizeLinear on every layer, ONNX
Runtime's own ``quantize_static(weight_type=QInt4)`` (uint8 activations, opset 21), and our int4
file loaded with ``session.disable_quant_qdq=1`` (ORT then folds the int4 weights to fp32).

Latency: one intra-op thread, batch 1, ``--rounds`` interleaved rounds (every file once per
round) of 20 warm-up and ``--runs`` timed runs; a file's figure is the median of its round
medians, and the spread is min-max of the round medians. ``kept ops`` is the graph after ORT's
optimizations (saved with ``optimized_model_filepath``): a ``DequantizeLinear`` that stays runs
at every inference. ``max |ORT - torch|`` is over 16 random inputs, relative to max |torch|.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import version_converter
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from torch import nn

from trials import DigitsTask, Mnist1dTask
from trials._compress import prunable_layers, round_to_grid
from trials._export import _Calibration, convert_fp16, export_onnx, quantize_int4, quantize_int8
from trials._quantize import INT4_GRID, WeightGrid, int8_formats, weight_grid
from trials._quantize_auto import machine_key


def _models(task: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if task == "digits":
        return DigitsTask().build_model().eval(), torch.randn(1, 1, 8, 8)
    return Mnist1dTask().build_model().eval(), torch.randn(1, 1, 40)


def _on_grid(model: nn.Module, grid: WeightGrid | None) -> nn.Module:
    import copy

    out = copy.deepcopy(model)
    if grid is not None:
        round_to_grid(prunable_layers(out), grid)
    return out


def _ort_int4_static(fp32: Path, out: Path, calibration: np.ndarray) -> None:
    model = version_converter.convert_version(onnx.load(str(fp32)), 21)
    at21 = out.with_name("fp32-opset21.onnx")
    onnx.save(model, str(at21))
    quantize_static(
        str(at21),
        str(out),
        _Calibration(calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt4,
        calibrate_method=CalibrationMethod.MinMax,
    )


def _session(path: Path, *, fold_qdq: bool = False) -> tuple[ort.InferenceSession, list[str]]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if fold_qdq:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    optimized = path.with_name(path.stem + (".fold" if fold_qdq else "") + ".opt.onnx")
    options.optimized_model_filepath = str(optimized)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    kept = sorted({n.op_type for n in onnx.load(str(optimized)).graph.node})
    return session, kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["digits", "mnist1d"], default="mnist1d")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dense, example = _models(args.task)
    calibration = np.random.default_rng(0).standard_normal((128, *example.shape[1:]))
    calibration = calibration.astype(np.float32)
    x = torch.randn(16, *example.shape[1:])
    tmp = Path(tempfile.mkdtemp(prefix="slimtune-quant-"))

    def fp32_of(grid: WeightGrid | None, name: str) -> tuple[Path, nn.Module]:
        model = _on_grid(dense, grid)
        path = tmp / f"{name}.fp32.onnx"
        export_onnx(model, example, path, what=name)
        return path, model

    rows: list[tuple[str, Path, nn.Module, bool]] = []  # label, file, torch model, fold_qdq
    path, model = fp32_of(None, "fp32")
    rows.append(("fp32", path, model, False))
    fp16 = tmp / "fp16.onnx"
    convert_fp16(path, fp16, what="fp16")
    rows.append(("fp16", fp16, model, False))
    for fmt in int8_formats():
        src, model = fp32_of(fmt.grid, fmt.name)
        out = tmp / f"{fmt.name}.onnx"
        quantize_int8(src, out, calibration, what=fmt.name, fmt=fmt)
        rows.append((f"int8 {fmt.name}", out, model, False))
    src, model = fp32_of(INT4_GRID, "int4")
    int4 = tmp / "int4.onnx"
    quantize_int4(src, int4, what="int4")
    rows.append(("int4 (slimtune: MatMulNBits Linear, int4 DQ Conv)", int4, model, False))
    rows.append(("  same file, session.disable_quant_qdq=1", int4, model, True))
    all_dq = tmp / "int4-all-dq.onnx"
    quantize_int4(src, all_dq, what="all-dq", matmulnbits=False)
    rows.append(("  int4 DQ on every layer (Gemm too)", all_dq, model, False))
    ort_int4 = tmp / "int4-ort-static.onnx"
    _ort_int4_static(src, ort_int4, calibration)
    rows.append(("  ORT quantize_static QInt4 + u8 activations", ort_int4, model, False))
    path3, model3 = fp32_of(weight_grid(3), "sim3")
    rows.append(("3-bit simulated (fp32 file, baked)", path3, model3, False))

    load_before = os.getloadavg()[0]
    sessions: list[tuple[ort.InferenceSession, list[str]]] = []
    for _, path, _, fold in rows:
        sessions.append(_session(path, fold_qdq=fold))
    feed = example.numpy()
    medians: list[list[float]] = [[] for _ in rows]
    for _ in range(args.rounds):
        for i, (session, _) in enumerate(sessions):
            medians[i].append(_median_ms(session, {"input": feed}, args.runs))
    fp32_ms = statistics.median(medians[0])
    key = machine_key(args.task, dense)
    lines = [
        f"task {args.task} (dense model, weights on each grid), CPU {key['cpu']} "
        f"{' '.join(key['cpu_isa'])}, onnxruntime {ort.__version__}, torch {torch.__version__}, "
        f"python {platform.python_version()}; {args.rounds} rounds x {args.runs} runs, 1 thread; "
        f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
        f"({os.cpu_count()} CPUs)",
        "",
        "| artifact | file KB | latency ms (spread) | vs fp32 | kept ops | max abs ORT-torch |",
        "|---|---|---|---|---|---|",
    ]
    table = zip(rows, sessions, medians, strict=True)
    for (label, path, model, _), (session, kept), times in table:
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        err = float(np.abs(got - expected).max() / np.abs(expected).max())
        ms = statistics.median(times)
        interesting = [o for o in kept if o not in ("Relu", "MaxPool", "Reshape", "ReorderInput")]
        lines.append(
            f"| {label} | {path.stat().st_size / 1e3:.0f} | {ms:.3f} ({min(times):.3f}-"
            f"{max(times):.3f}) | {ms / fp32_ms:.2f}x | {', '.join(interesting)} | {err:.1e} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


def _median_ms(session: ort.InferenceSession, feed: dict[str, np.ndarray], runs: int) -> float:
    for _ in range(20):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


if __name__ == "__main__":
    sys.exit(main())
