"""Errors a trial raises on purpose. Each says the rule, the value and the fix."""

from __future__ import annotations

from searchspace import SlimtuneError


class TaskError(SlimtuneError):
    """A task reference cannot be loaded, or a task breaks the Task contract."""


class TrainingDivergedError(SlimtuneError):
    """Training produced a loss that is not a finite number."""


class ExportError(SlimtuneError):
    """The model could not be exported to a self-contained ONNX file."""


class QuantizationError(SlimtuneError):
    """Quantization did not produce the artifact the trial claims."""


class BaselineCacheError(SlimtuneError):
    """A cached baseline on disk is unreadable or belongs to another task."""


class PruningError(SlimtuneError):
    """Pruning did not leave the model as sparse as requested."""


class ExportClaimError(SlimtuneError):
    """The exported artifact does not show the compression the trial claims (op types,
    initializer types, channel counts); the trial fails instead of reporting a result."""
