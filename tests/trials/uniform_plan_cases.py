"""Knob sets whose artifacts were fingerprinted with the code before per-layer plans
(``data/uniform_plan_sha256.json``): a uniform plan must give the same bytes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from searchspace import TrialParams
from trials import TrialSettings

CASES: dict[str, TrialParams] = {
    "fp32-unstructured": TrialParams(lr=3e-3, batch_size=32, sparsity=0.5, bits=32),
    "fp16-structured": TrialParams(
        lr=3e-3, batch_size=64, sparsity=0.25, bits=16, pruning="structured"
    ),
    "int8-qat-unstructured": TrialParams(lr=1e-3, batch_size=32, sparsity=0.3, bits=8),
    "int4-ptq-structured": TrialParams(
        lr=1e-3, batch_size=32, sparsity=0.5, bits=4, pruning="structured", quant_scheme="ptq"
    ),
    "sim3-qat": TrialParams(lr=1e-3, batch_size=32, sparsity=0.0, bits=3),
}


def settings(cache_dir: Path, work_dir: Path) -> TrialSettings:
    return TrialSettings(
        epochs=1,
        seed=3,
        cache_dir=cache_dir,
        work_dir=work_dir,
        latency_warmup=1,
        latency_repeats=5,
        latency_remeasure=0,
        calibration_samples=64,
        int8_format="u8s8-per-channel",
    )


def cpu_key() -> str:
    """The CPU a fingerprint holds for (``trials._cpu``: architecture, vendor, kernel ISA).

    The file is loaded by path: ``record_uniform_plan.py`` runs these cases with the code before
    per-layer plans on ``PYTHONPATH``, whose ``trials`` has no ``_cpu`` module."""
    path = Path(__file__).resolve().parents[2] / "trials" / "_cpu.py"
    spec = importlib.util.spec_from_file_location("slimtune_cpu", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a dataclass looks its module up there
    spec.loader.exec_module(module)
    return str(module.cpu_kind().key)
