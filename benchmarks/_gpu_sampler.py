"""GPU 0's utilisation and memory, sampled in a thread while benchmarks/gpu_packing.py runs its
searches."""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any


class GpuSampler:
    """Samples GPU 0's utilisation and memory in a thread: ``(unix time, util %, MiB used)``.

    NVML (``pynvml``, from nvidia-ml-py) when importable, else ``nvidia-smi``; with neither,
    no samples (the report says n/a)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, float, float]] = []
        self.source = "none"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._read = self._reader()

    def _reader(self) -> Any:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self.source = "NVML"

            def nvml() -> tuple[float, float]:
                util = pynvml.nvmlDeviceGetUtilizationRates(handle)
                mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
                return float(util.gpu), float(mem.used) / 2**20

            return nvml
        except Exception:
            pass
        try:
            query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used"]
            subprocess.run([*query, "--format=csv"], capture_output=True, check=True, timeout=10)
            self.source = "nvidia-smi"

            def smi() -> tuple[float, float]:
                out = subprocess.run(
                    [*query, "--format=csv,noheader,nounits", "--id=0"],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=10,
                ).stdout
                util, mem = (float(v) for v in out.strip().split(","))
                return util, mem

            return smi
        except Exception:
            return None

    def __enter__(self) -> GpuSampler:
        if self._read is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                util, mem = self._read()
                self.samples.append((time.time(), util, mem))
            except Exception:
                pass
            self._stop.wait(self.interval_s)

    def window(self, start: float, end: float) -> list[tuple[float, float, float]]:
        return [s for s in self.samples if start <= s[0] <= end]
