"""What one trial does: the task interface and built-in tasks, fine-tuning, pruning,
quantization, ONNX export, and measurement of the exported artifact in ONNX Runtime.

Importing this package has no process-wide side effects (thread counts are the caller's).
"""

from trials._baseline import ensure_baseline
from trials._check import TaskCheck, TaskCheckError, check_task
from trials._errors import (
    BaselineCacheError,
    ExportClaimError,
    ExportError,
    PruningError,
    QuantizationError,
    TaskError,
    TrainingDivergedError,
)
from trials._export_check import ExportClaim, check_export
from trials._measure import measure_onnx, onnx_accuracy
from trials._registry import BUILTIN_TASKS, load_task
from trials._settings import Baseline, TrialResult, TrialSettings
from trials._task import Split, SplitTask, Task
from trials._trial import run_baseline, run_trial
from trials.tasks import DigitsTask, Mnist1dTask

__all__ = [
    "BUILTIN_TASKS",
    "Baseline",
    "BaselineCacheError",
    "DigitsTask",
    "ExportClaim",
    "ExportClaimError",
    "ExportError",
    "Mnist1dTask",
    "PruningError",
    "QuantizationError",
    "Split",
    "SplitTask",
    "Task",
    "TaskCheck",
    "TaskCheckError",
    "TaskError",
    "TrainingDivergedError",
    "TrialResult",
    "TrialSettings",
    "check_export",
    "check_task",
    "ensure_baseline",
    "load_task",
    "measure_onnx",
    "onnx_accuracy",
    "run_baseline",
    "run_trial",
]
