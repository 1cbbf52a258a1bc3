"""Which kind of CPU this is, as far as a trial's bytes and timings are concerned.

A trained model's last bits and an int8 file's outputs depend on the kernels torch and ONNX
Runtime dispatch to, and those are chosen by the CPU's instruction sets (AVX2 or AVX-512 code
paths, VNNI int8 kernels) and, for MKL's and oneDNN's paths, by its vendor. Two machines of the
same :func:`cpu_kind` run the same kernels; a trial rebuilt on another kind may differ bit for
bit. The int8 format choice keys its cache on the same reading (``trials._quantize_auto``).

Standard library only: the test that compares artifacts with the code before per-layer plans
loads this file by path while another version of the package is imported.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

# Instruction sets that change which float and int8 kernels run (x86 and ARM names as
# /proc/cpuinfo spells them).
KERNEL_ISA = (
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "asimddp",
    "i8mm",
    "sve",
)


@dataclass(frozen=True)
class CpuInfo:
    """What ``/proc/cpuinfo`` says of the first CPU (empty strings and no flags where the
    system does not say): vendor, model name, and the :data:`KERNEL_ISA` features present."""

    machine: str
    vendor: str
    model: str
    isa: tuple[str, ...]


@dataclass(frozen=True)
class CpuKind:
    """``key``: architecture, vendor and the kernel instruction sets present (what decides the
    kernels); ``model``: the CPU's model name, for people."""

    key: str
    model: str

    def __str__(self) -> str:
        return f"{self.model} ({self.key})"


@functools.cache
def cpu_info() -> CpuInfo:
    """This machine's CPU, read once per process (Linux; elsewhere the architecture alone)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    vendor, model, flags = "", "", set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if name == "vendor_id" and not vendor:
            vendor = value
        elif name in ("model name", "cpu model", "hardware") and value and not model:
            model = value
        elif name in ("flags", "features"):
            flags.update(value.split())
    return CpuInfo(platform.machine(), vendor, model, tuple(sorted(flags & set(KERNEL_ISA))))


def cpu_kind() -> CpuKind:
    """This machine's kind of CPU (see :class:`CpuKind`)."""
    info = cpu_info()
    key = " ".join([info.machine, info.vendor or "unknown", *info.isa])
    return CpuKind(key=key, model=info.model or platform.processor() or info.machine)
