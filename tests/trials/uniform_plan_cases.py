"""Knob sets whose artifacts were fingerprinted with the code before per-layer plans
(``data/uniform_plan_sha256.json``): a uniform plan must give the same bytes."""

from __future__ import annotations

import platform
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


# CPU features that change a trial's bytes: the float kernels torch and ONNX Runtime dispatch to
# (AVX2 or AVX-512 code paths, VNNI int8 kernels; the vendor for MKL's and oneDNN's paths).
_ISA = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "sve")


def cpu_key() -> str:
    """The CPU a fingerprint holds for: architecture, vendor and the ISA features above."""
    vendor, flags = "", set()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "vendor_id" and not vendor:
            vendor = value.strip()
        elif name in ("flags", "features"):
            flags.update(value.split())
    return " ".join([platform.machine(), vendor or "unknown", *sorted(flags & set(_ISA))])
