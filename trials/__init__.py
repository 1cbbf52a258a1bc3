"""What one trial does: the task interface and built-in tasks, fine-tuning, pruning,
quantization, ONNX export, and measurement of the exported artifact in ONNX Runtime.

Importing this package has no process-wide side effects (thread counts are the caller's).
"""

from trials._baseline import ensure_baseline
from trials._check import TaskCheck, TaskCheckError, check_task
from trials._cpu import CpuKind, cpu_kind
from trials._early import EarlyMeasurement, RungReport, RungReporter
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
from trials._files import write_text_atomic
from trials._fingerprints import VersionDrift, file_sha256, library_versions, weights_sha256
from trials._int8_fidelity import faithful as faithful_int8_formats
from trials._int8_fidelity import refused as refused_int8_formats
from trials._measure import (
    InlineMeter,
    LatencyMeter,
    LatencyPlan,
    LatencyReading,
    LatencySession,
    LatencyStats,
    latency_plan,
    measure_onnx,
    onnx_accuracy,
)
from trials._plan import CompressionPlan, LayerSetting
from trials._plan_allocate import Allocation, LayerOption, LayerTable, allocate
from trials._plan_export import check_plan_export
from trials._plan_tags import PLAN_JSON
from trials._probe import SchemeCheck, SchemeRefused, check_schemes
from trials._quantize_auto import (
    Int8Cache,
    Int8Choice,
    Int8Figures,
    Int8Subject,
    cpu_identity,
    int8_resolution,
    measure_int8_candidates,
    named_choice,
    resolved_choice,
    time_int8_candidates,
)
from trials._quantize_auto import Timing as Int8Timing
from trials._record import RECORD_SCHEMA_VERSION, RecordError, TrialRecord
from trials._registry import BUILTIN_TASKS, load_task
from trials._rung_state import RungState, RungStateError, trial_identity
from trials._settings import (
    Baseline,
    Int8Resolution,
    Lineage,
    PruningLog,
    TrialResult,
    TrialSettings,
)
from trials._task import Split, SplitTask, Task
from trials._trial import int8_subject, run_baseline, run_trial
from trials.tasks import DigitsTask, Mnist1dLargeTask, Mnist1dSmallTask, Mnist1dTask

__all__ = [
    "BUILTIN_TASKS",
    "PLAN_JSON",
    "RECORD_SCHEMA_VERSION",
    "Allocation",
    "Baseline",
    "BaselineCacheError",
    "CompressionPlan",
    "CpuKind",
    "DigitsTask",
    "EarlyMeasurement",
    "ExportClaim",
    "ExportClaimError",
    "ExportError",
    "InlineMeter",
    "Int8Cache",
    "Int8Choice",
    "Int8Figures",
    "Int8Resolution",
    "Int8Subject",
    "Int8Timing",
    "LatencyMeter",
    "LatencyPlan",
    "LatencyReading",
    "LatencySession",
    "LatencyStats",
    "LayerOption",
    "LayerSetting",
    "LayerTable",
    "Lineage",
    "Mnist1dLargeTask",
    "Mnist1dSmallTask",
    "Mnist1dTask",
    "PruningError",
    "PruningLog",
    "QuantizationError",
    "RecordError",
    "RungReport",
    "RungReporter",
    "RungState",
    "RungStateError",
    "SchemeCheck",
    "SchemeRefused",
    "Split",
    "SplitTask",
    "Task",
    "TaskCheck",
    "TaskCheckError",
    "TaskError",
    "TrainingDivergedError",
    "TrialRecord",
    "TrialResult",
    "TrialSettings",
    "VersionDrift",
    "allocate",
    "check_export",
    "check_plan_export",
    "check_schemes",
    "check_task",
    "cpu_identity",
    "cpu_kind",
    "ensure_baseline",
    "faithful_int8_formats",
    "file_sha256",
    "int8_resolution",
    "int8_subject",
    "latency_plan",
    "library_versions",
    "load_task",
    "measure_int8_candidates",
    "measure_onnx",
    "named_choice",
    "onnx_accuracy",
    "refused_int8_formats",
    "resolved_choice",
    "run_baseline",
    "run_trial",
    "time_int8_candidates",
    "trial_identity",
    "weights_sha256",
    "write_text_atomic",
]
