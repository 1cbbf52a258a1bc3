"""The dynamo exporter's operator registry, built once per process instead of once per export.

``torch.onnx.export(dynamo=True)`` builds its table of ATen-to-ONNX functions from onnxscript's
torchlib on every call (``ONNXRegistry.from_torchlib``): about 500 functions, each of whose
source is parsed to read its ONNX domain. On the 2-core machine that is 1.1 s of the 2.4 s a
small CNN's export takes, paid again by every export of a trial, of the dry run, of the scheme
check and of the baseline (BENCHMARKS.md, "Trial time: the exporter's registry and the pruning
masks"). The table depends only on the opset and the installed torch and onnxscript, so
``registry_reused`` keeps the first one built in the process and hands each export a copy of
it: an export that adds operators of its own (``custom_translation_table``) changes its copy
only. The files are byte for byte those of a fresh registry
(``tests/trials/test_export_registry.py``). On a torch whose registry has another shape, it
steps aside and every export builds its own, as before.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

# One built table per opset arguments, for the life of the process (a memo of a pure function
# of the installed packages); the lock keeps two threads from swapping the builder at once.
_BUILT: dict[tuple[Any, ...], Any] = {}
_LOCK = threading.Lock()


@functools.cache
def _registry_class() -> Any | None:
    """torch's ``ONNXRegistry`` where it has the shape this module relies on, else None
    (looked up once: the installed torch does not change)."""
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:
        return None
    cls = getattr(_registration, "ONNXRegistry", None)
    if cls is None or not isinstance(cls.__dict__.get("from_torchlib"), classmethod):
        return None
    if not isinstance(getattr(cls(), "functions", None), dict):
        return None
    return cls


def _copied(registry: Any) -> Any:
    """A copy whose table can be changed without changing ``registry``'s."""
    twin = copy.copy(registry)
    twin.functions = {op: list(overloads) for op, overloads in registry.functions.items()}
    return twin


def _reusing(build: Callable[..., Any]) -> Callable[..., Any]:
    def from_torchlib(cls: type, *args: Any, **kwargs: Any) -> Any:
        key = (cls, args, tuple(sorted(kwargs.items())))
        if key not in _BUILT:
            _BUILT[key] = build(cls, *args, **kwargs)
        return _copied(_BUILT[key])

    return from_torchlib


@contextlib.contextmanager
def registry_reused() -> Iterator[None]:
    """Within the block, ``torch.onnx.export`` gets a copy of the registry built the first
    time instead of building its own."""
    cls = _registry_class()
    if cls is None:
        yield
        return
    with _LOCK:
        original = cls.__dict__["from_torchlib"]
        cls.from_torchlib = classmethod(_reusing(original.__func__))
        try:
            yield
        finally:
            cls.from_torchlib = original
