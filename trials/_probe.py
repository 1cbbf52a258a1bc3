"""One tiny trial per compression scheme, before a search: every bit-width x pruning scheme the
space allows is applied to the task's model (as built, untrained), exported and put through
the export check, so that an architecture/knob pair that cannot work is refused in seconds,
naming the layer, the knob and the fix, instead of failing trial after trial.

Cheap by construction: per pruning scheme the model is exported to ONNX once (twice when the
space has simulated widths: their weights must lie on a grid), and the fp16, int8 and int4
artifacts are derived from that fp32 file as a trial derives them.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from searchspace import SIMULATED_BITS, SlimtuneError
from trials._attention import rewrite_multihead_attention
from trials._compress import global_magnitude_masks, prunable_layers, round_to_grid
from trials._errors import TaskError
from trials._export import convert_fp16, export_onnx, quantize_int4, quantize_int8
from trials._export_check import ExportClaim, check_export
from trials._extra_weights import extra_weights
from trials._plain import plain_weights
from trials._quantize import DEFAULT_INT8_FORMAT, weight_grid
from trials._structured import output_units, prune_structured
from trials._tables import embedding_layers
from trials._task import Task, checked_data


class SchemeRefused(TaskError):
    """A compression scheme the config's space allows cannot work on the task's model."""


@dataclass(frozen=True)
class SchemeCheck:
    """One (bits, pruning) pair that compressed, exported and passed the export check."""

    bits: int
    pruning: str
    seconds: float

    def describe(self) -> str:
        return f"{self.bits} bits x {self.pruning}"


@dataclass(frozen=True)
class _Failure:
    bits: int
    pruning: str
    reason: str


def check_schemes(
    task: Task,
    bits: Sequence[int],
    prunings: Sequence[str],
    *,
    sparsity: float,
    keep_float: Sequence[str] = (),
    round_to: int = 8,
    work_dir: Path | None = None,
) -> list[SchemeCheck]:
    """Compress ``task``'s model (untrained) at every ``bits`` x ``prunings`` pair, export it
    and run ``check_export`` on the artifact (which also loads and runs it in ONNX Runtime).
    Structured and unstructured pruning are applied at ``sparsity`` (the space's highest).
    Raises ``SchemeRefused`` listing every pair that failed, with the layer, knob and fix."""
    name = str(getattr(task, "name", type(task).__name__))
    example = task.example_input().float()
    x_train, _ = checked_data(task, "train")
    calibration = x_train[:16].float().numpy()
    checks: list[SchemeCheck] = []
    failures: list[_Failure] = []
    with tempfile.TemporaryDirectory(prefix="slimtune-schemes-", dir=work_dir) as tmp:
        for pruning in dict.fromkeys(prunings):
            base = task.build_model()
            plain_weights(base)  # as a trial makes its dense model (load_baseline_model)
            base.eval()
            for b, seconds, reason in _probe_pruning(
                base,
                example,
                calibration,
                pruning,
                sorted(set(bits), reverse=True),
                sparsity=sparsity,
                keep_float=tuple(keep_float),
                round_to=round_to,
                out=Path(tmp),
                what=f"scheme check of task {name!r}",
            ):
                if reason is None:
                    checks.append(SchemeCheck(b, pruning, seconds))
                else:
                    failures.append(_Failure(b, pruning, reason))
    if failures:
        lines = "\n".join(
            f"  - space.bits={f.bits} with space.pruning={f.pruning}: {f.reason}" for f in failures
        )
        raise SchemeRefused(
            f"task {name!r}: every compression scheme the config's space allows must work on "
            f"the model, but {len(failures)} of {len(failures) + len(checks)} bits x pruning "
            f"pairs (applied to the untrained model at sparsity {sparsity:g}, exported, "
            f"export-checked) cannot:\n{lines}\nFix: remove those bit-widths or pruning "
            "schemes from space.bits / space.pruning, or follow the fix each line names "
            "(e.g. quantization.keep_float: [<layer>] to accept a layer in float)."
        )
    return checks


def _probe_pruning(
    base: nn.Module,
    example: torch.Tensor,
    calibration: np.ndarray,
    pruning: str,
    bits: list[int],
    *,
    sparsity: float,
    keep_float: tuple[str, ...],
    round_to: int,
    out: Path,
    what: str,
) -> list[tuple[int, float, str | None]]:
    """(bits, seconds, failure reason or None) of each width for one pruning scheme."""
    start = time.perf_counter()
    results: list[tuple[int, float, str | None]] = []
    model = copy.deepcopy(base)
    what = f"{what} (pruning={pruning}, sparsity={sparsity:g})"
    try:
        rewrite_multihead_attention(model)
        dense_units = output_units(model)
        removed = 0
        if pruning == "structured":  # torch-pruning traces with autograd: no no_grad here
            removed = prune_structured(
                model, example, sparsity, what=what, round_to=round_to
            ).removed
        elif sparsity > 0:
            layers = prunable_layers(model)
            with torch.no_grad():
                for layer, mask in zip(
                    layers, global_magnitude_masks(layers, sparsity), strict=True
                ):
                    layer.weight.mul_(mask)
        units = output_units(model)
        fp32 = out / f"{pruning}.fp32.onnx"
        export_onnx(model, example, fp32, what=what)
    except SlimtuneError as exc:
        return [(b, time.perf_counter() - start, _reason(exc, what)) for b in bits]
    setup = time.perf_counter() - start
    simulated = [b for b in bits if b in SIMULATED_BITS]
    for b in bits:
        t0 = time.perf_counter()
        path = out / f"{pruning}.{b}.onnx"
        claim = ExportClaim(
            bits=b,
            units=units,
            dense_units=dense_units,
            structured=removed > 0,
            keep_float=keep_float,
        )
        try:
            if b in SIMULATED_BITS and b != min(simulated):
                continue  # the same code as the narrowest simulated width, checked below
            if b == 32:
                path = fp32
            elif b == 16:
                convert_fp16(fp32, path, what=what)
            elif b == 8:
                quantize_int8(fp32, path, calibration, what=what, fmt=DEFAULT_INT8_FORMAT)
            elif b == 4:
                quantize_int4(fp32, path, what=what)
            else:
                baked = copy.deepcopy(model)
                round_to_grid(prunable_layers(baked), weight_grid(b))
                round_to_grid(embedding_layers(baked), weight_grid(b))
                extra_weights(baked, example, b, keep_float).bake(baked)
                export_onnx(baked, example, path, what=what)
            check_export(path, claim, what=what, example=example.numpy())
            results.append((b, setup + time.perf_counter() - t0, None))
        except SlimtuneError as exc:
            results.append((b, setup + time.perf_counter() - t0, _reason(exc, what)))
    narrowest = {b: r for b, _, r in results if b in simulated}
    for b in simulated:
        if b not in narrowest:
            results.append((b, 0.0, narrowest.get(min(simulated))))
    return sorted(results, key=lambda r: -r[0])


def _reason(exc: BaseException, what: str) -> str:
    """The error's message without the probe's own prefix (the pair is named already)."""
    text = str(exc)
    return text[len(what) + 2 :] if text.startswith(f"{what}: ") else text
