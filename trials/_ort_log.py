"""One known-harmless line of ONNX Runtime's quantizer, kept out of the trials' logs.

With per-channel weights, ``quantize_static`` asks every weight for its channel axis; a rank-1
weight (a LayerNorm's scale or bias) has none, so ONNX Runtime logs, on the root logger,
``Axis 1 is out-of-range for weight '...norm1.weight' with rank 1`` and quantizes that weight
per-tensor, as it must. Every Transformer trial printed it once per LayerNorm. Only that line,
for rank-1 weights, is dropped; every other record passes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

_RANK1_AXIS = re.compile(r"Axis -?\d+ is out-of-range for weight '[^']*' with rank 1")


class Rank1AxisFilter(logging.Filter):
    """Drops ONNX Runtime's "Axis N is out-of-range for weight '...' with rank 1" records."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _RANK1_AXIS.fullmatch(record.getMessage()) is None


@contextmanager
def rank1_axis_warnings_dropped() -> Iterator[None]:
    """While the block runs, the root logger (where ONNX Runtime's quantizer logs) drops the
    rank-1 axis line; the filter is removed when the block ends."""
    root = logging.getLogger()
    quiet = Rank1AxisFilter()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)
