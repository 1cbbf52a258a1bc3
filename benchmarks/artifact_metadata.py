"""How much of the artifact was exporter debug metadata: file sizes with and without stripping
it (``trials._artifact_clean``), fp32 and int8, on MNIST-1D's CNN, a small Transformer and the
built-in ``transformer`` and ``transformer-linear`` tasks.

    .venv/bin/python benchmarks/artifact_metadata.py [--out FILE.md]

Deterministic (sizes only, no timing). "before" runs slimtune's own export path with the two
steps that strip (``restore_weight_names``, ``strip_debug_metadata``) replaced by no-ops; "after"
is the export path as trials run it. int8 is static QDQ in the default format, calibrated on 64
random inputs. The Transformer: token embedding (vocabulary 64, width 64), 2
``nn.TransformerEncoderLayer`` blocks (4 heads, MLP 128, LayerNorm), mean pool, classifier; 32
tokens per input. The built-in tasks' models get the trial's own ``nn.MultiheadAttention``
rewrite (``trials._attention``) first, as a trial does. Models are freshly initialised (sizes do
not depend on training).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

import trials._export as export_module
from trials import Mnist1dTask
from trials._artifact_clean import StripSummary
from trials._attention import rewrite_multihead_attention
from trials._export import export_onnx, quantize_int8
from trials.tasks import TransformerLinearTask, TransformerTask
from trials.tasks._transformer import SEQ_LEN, VOCAB


class SmallTransformer(nn.Module):
    def __init__(self, vocab: int = 64, width: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        block = nn.TransformerEncoderLayer(
            width, 4, dim_feedforward=2 * width, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, 10)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(1))


@contextmanager
def _no_stripping() -> Iterator[None]:
    """The export path with its two stripping steps turned into no-ops."""
    strip, restore = export_module.strip_debug_metadata, export_module.restore_weight_names
    export_module.strip_debug_metadata = lambda model: StripSummary(0, 0)  # type: ignore[assignment]
    export_module.restore_weight_names = lambda model, names: 0  # type: ignore[assignment]
    try:
        yield
    finally:
        export_module.strip_debug_metadata = strip  # type: ignore[assignment]
        export_module.restore_weight_names = restore  # type: ignore[assignment]


def _task_model(task: TransformerTask) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        model = task.build_model()
        rewrite_multihead_attention(model)
        return model

    return build


def _metadata_entries(path: Path) -> int:
    model = onnx.load(str(path))
    graph = model.graph
    items = [*graph.node, *graph.value_info, *graph.input, *graph.output, *graph.initializer]
    return sum(len(i.metadata_props) for i in items) + len(graph.metadata_props)


def _files(
    build: Callable[[], nn.Module], example: torch.Tensor, calibration: np.ndarray, folder: Path
) -> dict[str, Path]:
    torch.manual_seed(0)
    model = build().eval()
    out = {}
    fp32 = folder / "fp32.onnx"
    export_onnx(model, example, fp32, what="benchmark")
    out["fp32"] = fp32
    int8 = folder / "int8.onnx"
    quantize_int8(fp32, int8, calibration, what="benchmark")
    out["int8"] = int8
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    Case = tuple[Callable[[], nn.Module], torch.Tensor, np.ndarray]
    cases: dict[str, Case] = {
        "mnist1d": (
            lambda: Mnist1dTask().build_model(),
            torch.randn(1, 1, 40),
            rng.standard_normal((64, 1, 40)).astype(np.float32),
        ),
        "transformer (2 blocks, width 64)": (
            SmallTransformer,
            torch.randint(0, 64, (1, 32)),
            rng.integers(0, 64, (64, 32)).astype(np.int64),
        ),
        **{
            f"{task.name} task": (
                _task_model(task),
                torch.randint(0, VOCAB, (1, SEQ_LEN)).float(),
                rng.integers(0, VOCAB, (64, SEQ_LEN)).astype(np.float32),
            )
            for task in (TransformerTask(), TransformerLinearTask())
        },
    }
    lines = [
        f"artifact_metadata.py {' '.join(argv if argv is not None else sys.argv[1:])}",
        f"torch {torch.__version__}, onnx {onnx.__version__}",
        "",
        "| model | format | before: bytes | metadata entries | after: bytes | metadata | "
        "saved | size ratio to fp32, before -> after |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, (build, example, calibration) in cases.items():
            before_dir, after_dir = Path(tmp) / f"{name}-b", Path(tmp) / f"{name}-a"
            before_dir.mkdir()
            after_dir.mkdir()
            with _no_stripping():
                before = _files(build, example, calibration, before_dir)
            after = _files(build, example, calibration, after_dir)
            for fmt in before:
                b, a = before[fmt].stat().st_size, after[fmt].stat().st_size
                rb = before["fp32"].stat().st_size / b
                ra = after["fp32"].stat().st_size / a
                lines.append(
                    f"| {name} | {fmt} | {b:,} | {_metadata_entries(before[fmt]):,} | {a:,} | "
                    f"{_metadata_entries(after[fmt])} | {1 - a / b:.1%} | "
                    f"{rb:.2f}x -> {ra:.2f}x |"
                )
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
