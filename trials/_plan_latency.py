"""Each layer's latency at each format, measured in ONNX Runtime by the search's meter, and the
latency a mixed plan is predicted to have from it.

The table (``measure_latency_table``), every file timed by the meter like a trial's artifact:

- each Conv/Linear layer of the dense model alone (a one-layer model holding a copy of it, fed
  the input it gets in the model on the task's example, batch 1) in each of ``MIXED_FORMATS``,
  exported as a plan's artifact is (``export_mixed``: a Cast from fp16, QDQ int8 in the
  search's int8 format, MatMulNBits or an int4 DequantizeLinear); the same at half its output
  and input units (``<format>@narrow``; a quarter of its multiply-adds, ``narrow_share``); its
  input quantized to int8 and back (``qdq``: what two neighbouring int8 layers save when ONNX
  Runtime fuses the pair between them);
- a graph that only copies its input (``overhead_ms``: the cost of one run, which every
  one-layer timing holds once);
- the whole model dense (``dense_ms``), and with every layer at fp16, at int8 and at int4.

The prediction (``LatencyTable.predict``) starts from the dense model's latency and replaces
each layer's fp32 time with its time at its format and kept widths (on the line through its
full-width and narrow timings: a fixed cost per op plus a cost per multiply-add), less a
``qdq`` for each int8 layer that follows an int8 layer; the time outside the layers (dense less
the layers' fp32 times) shrinks with the kept output units, weighted by each layer's output
elements (``outputs``). What layers alone do not show (a ReLU no
longer fused into an int8 convolution, a float op between two int8 layers that keeps their
quantization apart) is calibrated on the whole-model timings: each layer's time at a format is
multiplied by ``1 + context[f]``, where ``context[f]`` is the whole model's measured latency at
that format less the prediction, over the layers' summed time at it (at least -1: no layer's
time goes below zero, ``context_ratio``). What is left is what each
trial reports as the prediction's error (tag ``plan_latency_error``): the float ops
(activations, norms, attention's softmax) that per-layer widths also shrink, the meter's noise.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from trials._compress import Prunable
from trials._export import INPUT_NAME, OUTPUT_NAME
from trials._measure import LatencyMeter, LatencyPlan
from trials._plan import MIXED_FORMATS, CompressionPlan, LayerSetting
from trials._plan_export import export_mixed
from trials._quantize import Int8Format

LATENCY_TABLE_VERSION = 4  # 3: narrow-width timings; 4: outputs, context ratios
# The table's entry for a layer's input quantized to int8 and back (not a format).
ROUND_TRIP = "qdq"
# A format's entry + NARROW: the layer at half its output and input units; SHARE: the share of
# its multiply-adds that keeps; OUTPUTS: the layer's output elements on the example.
NARROW = "@narrow"
SHARE = "narrow_share"
OUTPUTS = "outputs"
# Calibration rows for an int8 export (activation ranges): enough for min-max.
_CALIBRATION = 64


@dataclass(frozen=True)
class LatencyTable:
    """What ``measure_latency_table`` measured (see the module docstring): ``dense_ms``,
    ``overhead_ms``, each layer alone per format and ``qdq`` (``layers``: name -> entry -> ms),
    ``context`` (format -> relative correction of a layer's time at it), on ``node`` with
    ``threads`` threads."""

    dense_ms: float
    overhead_ms: float
    layers: Mapping[str, Mapping[str, float]]
    context: Mapping[str, float] = field(default_factory=dict)
    node: str = ""
    threads: int = 1

    def compute_ms(self, name: str, entry: str, share: float = 1.0) -> float:
        """A layer's own time at ``entry`` (a format, or ``qdq``): its run less an empty one;
        at ``share`` of its multiply-adds, on the line through its time at full width and at
        its narrow width (a fixed cost per op plus a cost per multiply-add), or in proportion
        when it has no narrow timing."""
        times = self.layers[name]
        full = max(0.0, times[entry] - self.overhead_ms)
        narrow, low_share = times.get(entry + NARROW), times.get(SHARE)
        if share == 1.0:
            return full
        if narrow is None or low_share is None or not 0 < low_share < 1:
            return share * full
        low = max(0.0, narrow - self.overhead_ms)
        slope = max(0.0, (full - low) / (1.0 - low_share))
        return max(0.0, full - slope) + slope * share

    def isolated(
        self, formats: Mapping[str, str], scale: Mapping[str, float] | None = None
    ) -> float:
        """The prediction from the layers alone, before the whole-model calibration."""
        scale = scale or {}
        total = self.dense_ms
        before = ""
        for name, fmt in formats.items():
            if name not in self.layers:
                continue
            share = scale.get(name, 1.0)
            total += self.compute_ms(name, fmt, share) - self.compute_ms(name, "fp32")
            if fmt == before == "int8" and ROUND_TRIP in self.layers[name]:
                total -= share * self.compute_ms(name, ROUND_TRIP)
            before = fmt
        return total

    def predict(
        self,
        formats: Mapping[str, str],
        scale: Mapping[str, float] | None = None,
        outputs: Mapping[str, float] | None = None,
    ) -> float:
        """Predicted latency (ms) of the plan giving each layer of ``formats`` (in module order)
        its format, each layer's work scaled by ``scale`` (its kept share of multiply-adds;
        default 1) and its output units by ``outputs`` (its kept share; default 1): the time
        of the model outside its layers (activations, pooling, norms) shrinks with the layers'
        outputs, weighted by their output elements."""
        scale = scale or {}
        total = self.isolated(formats, scale) - self._outside_saved(outputs or {})
        for name, fmt in formats.items():
            if name in self.layers and fmt in self.context:
                total += self.context[fmt] * self.compute_ms(name, fmt, scale.get(name, 1.0))
        return max(total, self.overhead_ms)

    def _outside_saved(self, outputs: Mapping[str, float]) -> float:
        """The time outside the layers that narrower outputs save (see ``predict``)."""
        sizes = {n: t.get(OUTPUTS, 0.0) for n, t in self.layers.items()}
        total = sum(sizes.values())
        if not outputs or total <= 0:
            return 0.0
        layers = sum(self.compute_ms(n, "fp32") for n in self.layers)
        outside = max(0.0, self.dense_ms - self.overhead_ms - layers)
        kept = sum(outputs.get(n, 1.0) * size for n, size in sizes.items()) / total
        return outside * (1.0 - kept)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": LATENCY_TABLE_VERSION,
            "dense_ms": self.dense_ms,
            "overhead_ms": self.overhead_ms,
            "layers": {n: dict(v) for n, v in self.layers.items()},
            "context": dict(self.context),
            "node": self.node,
            "threads": self.threads,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyTable | None:
        """The table ``to_dict`` wrote; None for anything else (another version, a bad file)."""
        try:
            if data.get("version") != LATENCY_TABLE_VERSION:
                return None
            return cls(
                dense_ms=float(data["dense_ms"]),
                overhead_ms=float(data["overhead_ms"]),
                layers={
                    str(n): {str(f): float(ms) for f, ms in v.items()}
                    for n, v in data["layers"].items()
                },
                context={str(f): float(r) for f, r in data["context"].items()},
                node=str(data.get("node", "")),
                threads=int(data.get("threads", 1)),
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            return None


class _Alone(nn.Module):
    """One layer as a whole model."""

    def __init__(self, layer: Prunable) -> None:
        super().__init__()
        self.layer = copy.deepcopy(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def layer_inputs(
    model: nn.Module, layers: Sequence[Prunable], x: torch.Tensor
) -> list[torch.Tensor]:
    """The input each layer gets when ``model`` runs on ``x`` (batch 1), batch-first: a Linear's
    leading dimensions are folded into one row dimension (``[1, rows, features]``, whatever the
    layout of the attention around it), a Conv's are as they come."""
    seen: dict[int, torch.Tensor] = {}

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        seen.setdefault(id(module), args[0].detach().float())

    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = []
    for layer in layers:
        got = seen[id(layer)]
        if isinstance(layer, nn.Linear) and got.dim() != 2:
            got = got.reshape(len(x), -1, got.shape[-1])
        out.append(got)
    return out


@dataclass(frozen=True)
class TableJob:
    """What ``measure_latency_table`` times with: the meter and its plan, the int8 format, a
    scratch directory, the node's name and the trial's description (for errors)."""

    meter: LatencyMeter
    plan: LatencyPlan
    fmt: Int8Format
    work_dir: Path
    node: str
    what: str


def measure_latency_table(
    model: nn.Module,
    names: Sequence[str],
    layers: Sequence[Prunable],
    example: torch.Tensor,
    batch: torch.Tensor,
    job: TableJob,
) -> LatencyTable:
    """Time each layer alone at each format, an empty run, and the whole model dense, at int8
    and at int4 (see the module docstring) with ``job.meter``."""
    x = example.numpy()
    calibration = batch[:_CALIBRATION]
    path = job.work_dir / "latency-table.onnx"

    def timed(write: Callable[[Path], None], feed: np.ndarray) -> float:
        try:
            write(path)
            return job.meter.measure(path, feed, job.plan).stats.median_ms
        finally:
            path.unlink(missing_ok=True)

    def exported(
        net: nn.Module, names: Sequence[str], fmt: str, one: torch.Tensor, rows: torch.Tensor
    ) -> Callable[[Path], None]:
        plan = CompressionPlan(tuple((n, LayerSetting(fmt)) for n in names), kind="mixed")
        what = f"{job.what}: latency table, {','.join(names)[:60]} at {fmt}"
        return lambda p: _export(net, one, p, plan, job.fmt, rows.numpy(), what=what)

    table: dict[str, dict[str, float]] = {}
    ones = layer_inputs(model, layers, example)
    rows = layer_inputs(model, layers, calibration)
    for layer, name, one, many in zip(layers, names, ones, rows, strict=True):
        alone = _Alone(layer).eval()
        table[name] = {
            fmt: timed(exported(alone, ["layer"], fmt, one, many), one.numpy())
            for fmt in MIXED_FORMATS
        }
        with torch.no_grad():
            table[name][OUTPUTS] = float(alone(one).numel())
        cut = _narrow(layer)
        if cut is not None:
            thin, keep_in, share = cut
            one_in, many_in = (
                _first_inputs(layer, one, keep_in),
                _first_inputs(layer, many, keep_in),
            )
            for fmt in MIXED_FORMATS:
                write = exported(_Alone(thin).eval(), ["layer"], fmt, one_in, many_in)
                table[name][fmt + NARROW] = timed(write, one_in.numpy())
            table[name][SHARE] = share
        round_trip = partial(_write_round_trip, example=one.numpy(), fmt=job.fmt)
        table[name][ROUND_TRIP] = timed(round_trip, one.numpy())
    overhead = timed(partial(_write_identity, example=x), x)
    dense = timed(exported(model, names, "fp32", example, calibration), x)
    first = LatencyTable(dense, overhead, table, node=job.node, threads=job.plan.threads)
    context: dict[str, float] = {}
    for fmt in MIXED_FORMATS[1:]:
        whole = timed(exported(model, names, fmt, example, calibration), x)
        summed = sum(first.compute_ms(n, fmt) for n in names)
        context[fmt] = context_ratio(whole, first.isolated(dict.fromkeys(names, fmt)), summed)
    return LatencyTable(dense, overhead, table, context, node=job.node, threads=job.plan.threads)


def context_ratio(whole_ms: float, isolated_ms: float, layers_ms: float) -> float:
    """``context[f]``: the whole model's measured latency at a format less the layers-alone
    prediction, over the layers' summed time at it; never below -1, where it would give a
    layer a negative time. A whole-model timing far below its layers' own (a noisy table:
    e.g. timed inline beside another trial's training) would otherwise credit a plan with
    more time than its layers take, and meet a latency budget by noise."""
    return max(-1.0, (whole_ms - isolated_ms) / (layers_ms or 1.0))


def _export(
    net: nn.Module,
    example: torch.Tensor,
    path: Path,
    plan: CompressionPlan,
    fmt: Int8Format,
    rows: np.ndarray,
    *,
    what: str,
) -> None:
    export_mixed(net, example, path, plan, fmt, rows, scheme="ptq", what=what)


def _narrow(layer: Prunable) -> tuple[Prunable, int, float] | None:
    """A copy of ``layer`` keeping its first half of output and of input units, the input units
    it keeps and the share of multiply-adds; None for a grouped convolution or a layer with a
    single output or input unit."""
    weight = layer.weight.detach()
    out, inp = int(weight.shape[0]), int(weight.shape[1])
    if getattr(layer, "groups", 1) != 1 or out < 2 or inp < 2:
        return None
    keep_out, keep_in = out // 2, inp // 2
    thin = copy.deepcopy(layer)
    thin.weight = nn.Parameter(weight[:keep_out, :keep_in].clone())
    if layer.bias is not None:
        thin.bias = nn.Parameter(layer.bias.detach()[:keep_out].clone())
    if isinstance(thin, nn.Linear):
        thin.in_features, thin.out_features = keep_in, keep_out
    else:
        thin.in_channels, thin.out_channels = keep_in, keep_out
    return thin, keep_in, (keep_out * keep_in) / (out * inp)


def _first_inputs(layer: Prunable, x: torch.Tensor, keep: int) -> torch.Tensor:
    """The first ``keep`` input units of ``x`` (a Linear's last axis, a Conv's channel axis)."""
    cut = x[..., :keep] if isinstance(layer, nn.Linear) else x[:, :keep]
    return cut.contiguous()


def _write_round_trip(path: Path, example: np.ndarray, fmt: Int8Format) -> None:
    """An ONNX file that quantizes its input to int8 and back (``fmt``'s activation type)."""
    shape = list(example.shape)
    kind = TensorProto.UINT8 if fmt.activations == "u8" else TensorProto.INT8
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", [INPUT_NAME, "scale", "zero"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "scale", "zero"], [OUTPUT_NAME]),
        ],
        "round_trip",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, shape)],
        initializer=[
            helper.make_tensor("scale", TensorProto.FLOAT, [], [0.05]),
            helper.make_tensor("zero", kind, [], [128 if kind == TensorProto.UINT8 else 0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))


def _write_identity(path: Path, example: np.ndarray) -> None:
    """An ONNX file whose one node copies its input (what one run costs with no work)."""
    shape = list(example.shape)
    graph = helper.make_graph(
        [helper.make_node("Identity", [INPUT_NAME], [OUTPUT_NAME])],
        "empty",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
