"""Whether ONNX Runtime's int8 kernels compute an int8 format's own quantized math on this CPU.

A static QDQ int8 model says exactly what it computes: dequantize, the float operation,
quantize. ONNX Runtime fuses those into int8 kernels, which on most CPUs give the same numbers
up to rounding. On x86 CPUs without VNNI (AVX2 only, e.g. AMD Zen 2/3 or a VM that hides
AVX-512), the u8 x s8 kernels add pairs of 8-bit products in 16 bits, which saturate when
weights use the full int8 range: the result departs from the model's own math, by far more than
rounding (measured on such a CPU: 5-26 % of the output for the full-range formats of the
built-in CNN and MLP, where reduce-range weights, 7-bit, give the same numbers; see
docs/quantization.md). This is what ``reduce_range`` exists for.

``int8_format: auto`` therefore checks each candidate on the machine that times it: the
candidate's output through the int8 kernels (the session the meter measures with) against the
same file run with graph optimizations off (its QDQ math in float), over a few calibration
rows. A format is *faithful* when that deviation is within ``FACTOR`` times the smallest one
among the candidates, or ``FLOOR``; only faithful formats are chosen (``faithful``).
"""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort

from trials._measure import cpu_session

# A format whose kernels depart from its math by more than twice the best candidate's
# departure (rounding differences compound through the layers; the built-in transformer's
# formats depart by 2-4 %), and by more than 1 % of the output, is not faithful.
FACTOR = 2.0
FLOOR = 0.01
# Rows of calibration data each candidate is checked on (one at a time, at batch 1).
ROWS = 16


def kernel_deviations(models: dict[str, bytes], rows: np.ndarray) -> dict[str, float]:
    """Each candidate's departure from its own QDQ math (``kernel_deviation``) on ``rows``."""
    if len(rows) == 0:
        raise ValueError("kernel_deviations needs at least one input row")
    return {name: kernel_deviation(model, rows) for name, model in models.items()}


def kernel_deviation(model: bytes, rows: np.ndarray) -> float:
    """How far the int8 kernels' output for ``rows`` (run one at a time) is from the model's
    QDQ math: the norm of the difference over the norm of the math's output (0: the same)."""
    kernels = _outputs(cpu_session(model, threads=1), rows)
    math_ = _outputs(cpu_session(model, threads=1, optimized=False), rows)
    scale = float(np.linalg.norm(math_))
    diff = float(np.linalg.norm(kernels - math_))
    if not (math.isfinite(diff) and math.isfinite(scale)):
        return math.inf
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


def faithful(deviations: dict[str, float]) -> set[str]:
    """The formats whose kernels compute their own math on the CPU that ran ``deviations``."""
    finite = [d for d in deviations.values() if math.isfinite(d)]
    if not finite:
        return set()
    bound = max(FACTOR * min(finite), FLOOR)
    return {name for name, d in deviations.items() if d <= bound}


def refused(deviations: dict[str, float]) -> list[str]:
    """The formats ``faithful`` leaves out, sorted."""
    return sorted(set(deviations) - faithful(deviations))


def _outputs(session: ort.InferenceSession, rows: np.ndarray) -> np.ndarray:
    name = session.get_inputs()[0].name
    out = [
        np.concatenate([np.ravel(o) for o in session.run(None, {name: rows[i : i + 1]})])
        for i in range(len(rows))
    ]
    return np.concatenate(out).astype(np.float64)
