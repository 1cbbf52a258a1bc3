"""Choose the int8 format by measurement (``quantization.int8_format: auto``).

ONNX Runtime's int8 formats can differ by up to ~2x in latency from one CPU to the next (U8S8 with
reduce_range vs S8S8 without VNNI, per-tensor vs per-channel). ``auto`` quantizes the task's
dense fp32 model in every candidate format, times each at batch 1 on one thread, checks on a few
calibration rows that the CPU's int8 kernels compute each format's own math
(``trials._int8_fidelity``: without VNNI, the full-range formats can saturate), and takes the
fastest faithful one (the most precise among those within 5 % of it, see ``pick``). The result
is cached in the trial cache directory, keyed by task, model shapes, CPU and ONNX Runtime
version, under a file lock.

In a search the driver resolves ``auto`` once, before any trial starts: the search's latency
meter times the candidates (``int8_candidates``, ``time_int8_candidates``) on its own node under
its gate, and every trial gets the result in ``TrialSettings.int8_auto``. A trial run as a library
call without it (``int8_auto=None``) measures here, in its own process (``choose_int8_format``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from torch import Tensor, nn

from trials._cpu import cpu_info
from trials._export import INPUT_NAME, export_onnx, quantize_int8
from trials._files import write_text_atomic
from trials._int8_fidelity import ROWS, faithful, kernel_deviations, refused
from trials._measure import cpu_session
from trials._quantize import Int8Format, int8_format, int8_formats
from trials._settings import Int8Resolution

CACHE_SUBDIR = "int8-format"
# Latencies within 5 % (or 5 us) of the fastest count as ties (see ``pick``). Single-thread
# medians moved +-10 % under contention on a shared 2-core box; interleaved rounds keep ratios
# within a few %; a model that runs in tens of microseconds is all overhead.
TIE = 0.05
TIE_MS = 0.005


@dataclass(frozen=True)
class Int8Choice:
    """The int8 format a trial uses and how it was chosen: ``config`` (named in the config),
    ``measured`` (for this search or trial) or ``cached`` (measured earlier on that machine).
    ``latencies_ms``: each candidate's median batch-1 latency on the dense model, and
    ``deviations`` their kernels' departure from their own math (both empty for ``config``
    in a trial; a search that names its format has its meter check them, ``named_choice``);
    ``node``: where they were timed (the search meter's node; empty when the trial timed them
    in its own process)."""

    fmt: Int8Format
    source: Literal["config", "measured", "cached"]
    latencies_ms: dict[str, float] = field(default_factory=dict)
    node: str = ""
    deviations: dict[str, float] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        tags = {"int8_format": self.fmt.name, "int8_format_source": self.source}
        if self.latencies_ms:
            tags["int8_format_latencies_ms"] = json.dumps(
                {k: round(v, 4) for k, v in self.latencies_ms.items()}
            )
        if self.deviations:
            tags["int8_format_kernel_deviation"] = json.dumps(
                {k: _rounded(v) for k, v in self.deviations.items()}
            )
            if refused(self.deviations):
                tags["int8_format_refused"] = ",".join(refused(self.deviations))
        if self.node:
            tags["int8_format_node"] = self.node
        return tags


@dataclass(frozen=True)
class Timing:
    """How candidates are timed: ``rounds`` interleaved rounds (every format once per round, so
    a burst of load hits them alike) of ``warmup`` untimed and ``runs`` timed batch-1 runs; a
    format's figure is the median over rounds of each round's median."""

    rounds: int = 5
    warmup: int = 10
    runs: int = 50


@dataclass(frozen=True)
class Int8Subject:
    """What ``auto`` times: the task's dense model, its example input and the calibration data
    the candidates are quantized with."""

    task_name: str
    dense: nn.Module
    example: Tensor
    calibration: np.ndarray

    def key(self, cpu: dict[str, Any] | None = None) -> dict[str, Any]:
        """The cache key of timing it on ``cpu`` (``cpu_identity()`` of the timing machine)."""
        return machine_key(self.task_name, self.dense, cpu)

    def candidates(self, scratch: Path) -> dict[str, bytes]:
        """The dense model in every int8 format (see ``int8_candidates``)."""
        what = f"int8 format candidates of task {self.task_name!r}"
        return int8_candidates(self.dense, self.example, self.calibration, scratch, what=what)

    def feed(self) -> np.ndarray:
        """The rows the candidates are run on: the example input first (the candidates are
        timed on it, at batch 1), then calibration rows (their kernels are checked on all)."""
        example = self.example[:1].float().numpy()
        rows = np.asarray(self.calibration[: ROWS - 1], dtype=np.float32)
        return np.ascontiguousarray(np.concatenate([example, rows.reshape(-1, *example.shape[1:])]))


@dataclass(frozen=True)
class Int8Figures:
    """What ``auto`` measured of the candidates on one CPU: median batch-1 ms and the kernels'
    departure from each format's own math (``trials._int8_fidelity``), by format name."""

    latencies_ms: dict[str, float]
    deviations: dict[str, float]

    def chosen(self) -> str:
        """The format ``auto`` takes: the fastest faithful one (see ``pick``)."""
        return pick(self.latencies_ms, faithful(self.deviations))


def int8_resolution(
    figures: Int8Figures, source: Literal["measured", "cached"], *, node: str = ""
) -> Int8Resolution:
    """A search's resolution of ``auto`` from its meter's figures (``Int8Figures.chosen``)."""
    return Int8Resolution(
        figures.chosen(),
        source,
        dict(figures.latencies_ms),
        node=node,
        deviations=dict(figures.deviations),
    )


def named_choice(name: str, figures: Int8Figures, *, node: str = "") -> Int8Choice:
    """A format named in the config, with the search meter's figures of every candidate: its
    trials use it as named; the figures state whether this CPU's kernels compute its math
    (``int8_format_kernel_deviation``, ``int8_format_refused``)."""
    return Int8Choice(
        int8_format(name),
        "config",
        dict(figures.latencies_ms),
        node=node,
        deviations=dict(figures.deviations),
    )


def resolved_choice(resolution: Int8Resolution) -> Int8Choice:
    """A search's resolution of ``auto`` (made by its driver and meter) as a trial's choice."""
    return Int8Choice(
        int8_format(resolution.format),
        resolution.source,
        dict(resolution.latencies_ms),
        node=resolution.node,
        deviations=dict(resolution.deviations),
    )


def choose_int8_format(
    setting: str,
    *,
    task_name: str,
    dense: nn.Module,
    example: Tensor,
    calibration: np.ndarray,
    cache_dir: Path,
    what: str,
    timing: Timing = Timing(),
) -> Int8Choice:
    """The format named by ``setting``, or for ``auto`` the fastest faithful candidate on
    ``dense``, measured here, in this process (once per machine and task; see the module
    docstring)."""
    if setting != "auto":
        return Int8Choice(int8_format(setting), "config")
    cache = Int8Cache(cache_dir, machine_key(task_name, dense))
    with cache.locked():
        figures = cache.read()
        source: Literal["measured", "cached"] = "cached"
        if figures is None:
            subject = Int8Subject(task_name, dense, example, calibration)
            figures = measure_int8_candidates(
                subject.candidates(cache.folder), subject.feed(), timing
            )
            figures = cache.write(figures, timing)
            source = "measured"
    return Int8Choice(
        int8_format(figures.chosen()),
        source,
        dict(figures.latencies_ms),
        deviations=dict(figures.deviations),
    )


def measure_int8_candidates(
    models: dict[str, bytes], feed: np.ndarray, timing: Timing = Timing()
) -> Int8Figures:
    """Time each candidate on ``feed``'s first row and check its kernels on every row (the
    caller keeps other work off the machine meanwhile)."""
    return Int8Figures(
        time_int8_candidates(models, feed[:1], timing), kernel_deviations(models, feed)
    )


def int8_candidates(
    dense: nn.Module, example: Tensor, calibration: np.ndarray, scratch: Path, *, what: str
) -> dict[str, bytes]:
    """``dense`` exported at batch 1 and statically quantized in every int8 format: the ONNX
    bytes by format name (``scratch`` holds the files while they are written)."""
    scratch.mkdir(parents=True, exist_ok=True)
    models: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(dir=scratch, prefix="candidates-") as tmp:
        fp32 = Path(tmp) / "dense.onnx"
        export_onnx(dense, example[:1], fp32, what=what)
        for fmt in int8_formats():
            path = Path(tmp) / f"{fmt.name}.onnx"
            quantize_int8(fp32, path, calibration, what=f"{what} (int8 format {fmt.name})", fmt=fmt)
            models[fmt.name] = path.read_bytes()
    return models


def time_int8_candidates(
    models: dict[str, bytes], example: np.ndarray, timing: Timing = Timing()
) -> dict[str, float]:
    """Median batch-1 latency (ms, one thread) of each candidate, timed in ``timing.rounds``
    interleaved rounds (the caller keeps other work off the machine meanwhile)."""
    if not models:
        raise ValueError("time_int8_candidates needs at least one candidate model")
    x = np.ascontiguousarray(example[:1], dtype=np.float32)
    sessions = {name: cpu_session(model, threads=1) for name, model in models.items()}
    rounds: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(timing.rounds):
        for name, session in sessions.items():
            rounds[name].append(_median_ms(session, x, timing))
    return {name: statistics.median(values) for name, values in rounds.items()}


def cpu_identity() -> dict[str, Any]:
    """This machine's CPU as an int8 timing depends on it: model name, int8-relevant ISA
    features, architecture and the ONNX Runtime version."""
    cpu = cpu_info()
    return {
        "cpu": cpu.model or platform.processor() or cpu.machine,
        "cpu_isa": list(cpu.isa),
        "machine": cpu.machine,
        "onnxruntime": ort.__version__,
    }


def model_shapes(dense: nn.Module) -> str:
    """A fingerprint of the layer shapes of ``dense`` (not of its weights)."""
    shapes = [[name, list(t.shape)] for name, t in dense.state_dict().items()]
    return hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]


def machine_key(
    task_name: str, dense: nn.Module, cpu: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What a measurement depends on: the task and its model's layer shapes, and the CPU that
    times it (``cpu``, as ``cpu_identity()`` returns it; None: this machine's)."""
    return {"task": task_name, "model_shapes": model_shapes(dense), **(cpu or cpu_identity())}


def _median_ms(session: ort.InferenceSession, x: np.ndarray, timing: Timing) -> float:
    feed = {INPUT_NAME: x}
    for _ in range(timing.warmup):
        session.run(None, feed)
    times = []
    for _ in range(timing.runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def pick(latencies: dict[str, float], allowed: set[str] | None = None) -> str:
    """The most precise format (first in ``searchspace.INT8_FORMATS``) whose latency is within
    ``TIE`` (or ``TIE_MS``) of the fastest: smaller differences are within the noise of a shared
    machine and do not pay for coarser weights (reduce-range 7-bit, per-tensor). ``allowed``:
    the formats that may be chosen (the faithful ones); None or empty: every timed one."""
    eligible = {k: v for k, v in latencies.items() if not allowed or k in allowed} or latencies
    bound = min(eligible.values())
    bound = max(bound * (1 + TIE), bound + TIE_MS)
    return next(
        fmt.name for fmt in int8_formats() if fmt.name in eligible and eligible[fmt.name] <= bound
    )


class Int8Cache:
    """The cached timing of one ``key`` (a ``machine_key``): a JSON file under
    ``cache_dir/int8-format/``, read and written under its file lock (``locked()``)."""

    def __init__(self, cache_dir: Path, key: dict[str, Any]) -> None:
        self.key = key
        self.folder = cache_dir / CACHE_SUBDIR
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self.path = self.folder / f"{_slug(str(key.get('task', 'task')))}-{digest}.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the entry's lock for the block (concurrent writers time it once)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with _locked(self.folder / f"{self.path.stem}.lock"):
            yield

    def read(self) -> Int8Figures | None:
        """The cached figures for the key, or None when absent, for another key, unreadable or
        made before the kernels were checked (then the caller measures again and overwrites
        it)."""
        try:
            data = json.loads(self.path.read_text())
            latencies = {str(k): float(v) for k, v in data["latencies_ms"].items()}
            deviations = {str(k): float(v) for k, v in data["kernel_deviations"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        names = {fmt.name for fmt in int8_formats()}
        if data.get("key") != self.key or not set(latencies) == set(deviations) == names:
            return None
        return Int8Figures(latencies, deviations)

    def write(self, figures: Int8Figures, timing: Timing) -> Int8Figures:
        """Store ``figures``; returns them as ``read`` gives them back (deviations to 6
        significant digits), for the caller to go on with: a search that measured and one that
        read the cache then decide on, and record, the same numbers."""
        deviations = {k: _rounded(v) for k, v in figures.deviations.items()}
        stored = Int8Figures(
            dict(figures.latencies_ms), {k: float(v) for k, v in deviations.items()}
        )
        record = {
            "key": self.key,
            "latencies_ms": stored.latencies_ms,
            "kernel_deviations": deviations,
            "chosen": stored.chosen(),
            "timing": {"rounds": timing.rounds, "warmup": timing.warmup, "runs": timing.runs},
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_text_atomic(self.path, json.dumps(record, indent=2))
        return stored


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock (``fcntl.flock``) held for the block; where fcntl does not
    exist (Windows) there is no lock and two trials may measure the same thing once each."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _rounded(deviation: float) -> float | str:
    """A deviation as JSON can hold it: 6 significant digits, ``"inf"`` when not finite."""
    return float(f"{deviation:.6g}") if math.isfinite(deviation) else "inf"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "task"
