"""How many GPU trials to pack on one GPU: throughput, GPU busy time and per-trial overhead.

    python benchmarks/gpu_packing.py [--per-gpu 1 4 8] [--rounds 3] [--cpus 2]
        [--isolation auto pause cores none] [--quiet-check 8]
        [--config examples/mnist1d_large_gpu.yaml] [--workdir DIR] [--out FILE]

For each packing P (trials per GPU), runs a real search (``slimtune search``: Ray Tune,
Optuna, MLflow, CUDA training) of ``rounds x P`` trials with ``resources: {gpu: 1/P, cpu:
--cpus}`` and ``concurrency: P``, on the config's task (default: ``mnist1d-large``). The
sampler is random with seed 0, so every packing runs the same trials (trial k has the same
knobs in each). All searches share one work directory: the data and the dense baseline are
made once, by the first.

``--isolation`` runs every packing under each ``latency.isolation`` mode given, side by side
(1 per GPU, the reference, runs once, under the first mode): ``pause`` is the gate on,
``none`` the gate off, ``cores`` the meter on cores of its own, ``auto`` the default (which
the table shows resolved). "x vs 1" is each row's throughput over the 1-per-GPU row's,
whatever the order of ``--per-gpu``. ``--quiet-check N`` then times N trials' ONNX files of
each row again with nothing else running and compares the recorded medians (issue 14's check:
within 3 %).

It reports per packing, from the trials' MLflow runs and from GPU samples taken meanwhile:
- trials per hour over the trial window (first trial run's start to the last one's end) and
  over the whole command (Ray start, the dry run, the baseline's measurement included);
- GPU busy: the mean of NVML's utilisation (the share of time a kernel was running) sampled
  every ``--sample-s`` seconds within the trial window, and the most GPU memory used;
- per-trial overhead: worker process starts (distinct worker pids x the measured start of a
  Python process that imports the trainable), CUDA set-up and data loading (as each trial
  logs them: paid by a worker's first trial only), against the trial time (its MLflow run's
  duration) and its training time; and the share of slot time no trial ran (scheduling);
- where a trial's time goes: training, export, measurement (and the latency gate's wait).

``--smoke`` runs the same on CPUs (``gpu: 0``, the tiny ``digits`` task, one round), to check
the script on a machine without a GPU; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/gpu_packing.py` from anywhere
    sys.path.insert(0, str(ROOT))
from benchmarks._quiet_check import QuietCheck, quiet_check  # noqa: E402

DEFAULT_CONFIG = ROOT / "examples" / "mnist1d_large_gpu.yaml"


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


@dataclass
class StartCost:
    """A fresh Python process that imports the trainable and sets up the training device."""

    total_s: float
    imports_s: float
    device_s: float

    @property
    def process_s(self) -> float:
        """What a new worker pays that no trial logs: interpreter start and imports (its CUDA
        set-up is logged by its first trial as ``device_init_seconds``)."""
        return self.total_s - self.device_s


def measure_start_cost(device: str, repeats: int = 3) -> StartCost:
    code = (
        "import time; t0 = time.perf_counter(); import orchestrator._trainable; "
        "from trials._device import prepare_device, training_device; "
        "t1 = time.perf_counter(); "
        f"d = prepare_device(training_device({device!r})); print(t1 - t0, d)"
    )
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": _pythonpath()},
        ).stdout
        total = time.perf_counter() - t0
        imports, dev = (float(v) for v in out.split()[-2:])
        runs.append(StartCost(total, imports, dev))
    runs.sort(key=lambda c: c.total_s)
    return runs[len(runs) // 2]


def _pythonpath() -> str:
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


@dataclass
class Packing:
    per_gpu: int
    trials: int
    wall_s: float
    runs: list[Run]
    gpu: list[tuple[float, float, float]] = field(default_factory=list)
    gpu_source: str = "none"
    isolation: str = "?"  # as the search resolved it (its run's latency_isolation tag)
    quiet: QuietCheck | None = None

    @property
    def label(self) -> str:
        return f"{self.per_gpu} {self.isolation}"

    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.info.status == "FINISHED"]

    def window(self) -> tuple[float, float]:
        done = self.finished()
        return (
            min(r.info.start_time for r in done) / 1e3,
            max(r.info.end_time for r in done) / 1e3,
        )


def search_config(
    base: dict[str, Any],
    *,
    per_gpu: int,
    trials: int,
    cpus: float,
    smoke: bool,
    pause_trials: bool | None = None,
    isolation: str | None = None,
) -> dict[str, Any]:
    """The benchmark's search config for one packing; ``isolation`` (``--isolation``) sets
    ``latency.isolation``, ``pause_trials`` (the older ``--pause-trials``) the older setting,
    when given."""
    cfg = json.loads(json.dumps(base))
    cfg.update(
        experiment=f"gpu-packing-{per_gpu}" + (f"-{isolation}" if isolation else ""),
        trials=trials,
        concurrency=per_gpu,
        sampler={"name": "random", "seed": 0},
        resources={"cpu": cpus, "gpu": 0 if smoke else 1 / per_gpu},
    )
    if smoke:
        cfg.update(task="digits", training={"epochs": 1})
        cfg["latency"] = {"warmup": 5, "repeats": 30, "threads": 1}
    if pause_trials is not None:
        cfg["latency"] = {**cfg.get("latency", {}), "pause_trials": pause_trials}
    if isolation is not None:
        cfg["latency"] = {**cfg.get("latency", {}), "isolation": isolation}
    cfg.setdefault("tracking", {})["uri"] = None
    return cfg


def run_packing(
    cfg: dict[str, Any], workdir: Path, per_gpu: int, sample_s: float, timeout_s: float
) -> Packing:
    path = workdir / f"{cfg['experiment']}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {
        **os.environ,
        "PYTHONPATH": _pythonpath(),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "RAY_AUTH_MODE": "disabled",
    }
    with GpuSampler(sample_s) as sampler:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "search", path.name],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(
            f"the search with {per_gpu} trials per GPU failed (exit {proc.returncode}):\n"
            + proc.stdout[-3000:]
            + proc.stderr[-3000:]
        )
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(cfg["experiment"])
    assert exp is not None
    # The newest search run of the experiment, and its trials.
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    parents = sorted(
        (r for r in runs if r.data.tags.get("slimtune.role") == "search"),
        key=lambda r: r.info.start_time,
    )
    parent = parents[-1].info.run_id
    isolation = parents[-1].data.tags.get("latency_isolation", "?")
    trials = [
        r
        for r in runs
        if r.data.tags.get("slimtune.role") == "trial"
        and r.data.tags.get("mlflow.parentRunId") == parent
    ]
    return Packing(
        per_gpu,
        int(cfg["trials"]),
        wall,
        trials,
        sampler.samples,
        sampler.source,
        isolation=isolation,
    )


def _m(run: Run, name: str) -> float:
    return float(run.data.metrics.get(name, 0.0))


def summarize(p: Packing, start: StartCost) -> dict[str, float]:
    done = p.finished()
    first, last = p.window()
    window = last - first
    durations = [(r.info.end_time - r.info.start_time) / 1e3 for r in done]
    busy = sum(durations)
    setup = sum(_m(r, "device_init_seconds") + _m(r, "data_seconds") for r in done)
    workers = len({r.data.tags.get("worker_pid", "") for r in done})
    starts = workers * start.process_s
    train = [_m(r, "train_seconds") for r in done]
    export = [_m(r, "export_seconds") for r in done]
    trial = [_m(r, "trial_seconds") for r in done]
    samples = [s for s in p.gpu if first <= s[0] <= last]
    n = len(done)
    return {
        "per_gpu": p.per_gpu,
        "finished": n,
        "failed": p.trials - n,
        "window_s": window,
        "wall_s": p.wall_s,
        "trials_per_hour": n / window * 3600 if window > 0 else float("nan"),
        "trials_per_hour_wall": n / p.wall_s * 3600,
        "gpu_busy": statistics.fmean(s[1] for s in samples) / 100 if samples else float("nan"),
        "gpu_mem_max_mib": max((s[2] for s in samples), default=float("nan")),
        "gpu_samples": len(samples),
        "trial_s_mean": busy / n,
        "train_s_mean": statistics.fmean(train),
        "export_s_mean": statistics.fmean(export),
        "measure_s_mean": statistics.fmean(
            t - tr - ex - _m(r, "device_init_seconds") - _m(r, "data_seconds")
            for r, t, tr, ex in zip(done, trial, train, export, strict=True)
        ),
        "record_s_mean": statistics.fmean(d - t for d, t in zip(durations, trial, strict=True)),
        "gate_wait_s_mean": statistics.fmean(_m(r, "latency_gate_wait_ms") / 1e3 for r in done),
        "workers": workers,
        "worker_start_s_per_trial": starts / n,
        "setup_s_per_trial": setup / n,
        "overhead_fraction": (starts + setup) / busy,
        "overhead_vs_train": (starts + setup) / max(sum(train), 1e-9),
        "slot_idle_fraction": 1 - busy / (p.per_gpu * window) if window > 0 else float("nan"),
        "first_trial_setup_s": statistics.fmean(
            _m(r, "device_init_seconds") + _m(r, "data_seconds")
            for r in done
            if _m(r, "worker_trial_index") == 1
        )
        if any(_m(r, "worker_trial_index") == 1 for r in done)
        else 0.0,
        "later_trial_setup_s": statistics.fmean(
            [
                _m(r, "device_init_seconds") + _m(r, "data_seconds")
                for r in done
                if _m(r, "worker_trial_index") > 1
            ]
            or [0.0]
        ),
    }


def machine() -> str:
    lines = [f"python {platform.python_version()}, {os.cpu_count()} CPUs ({platform.machine()})"]
    try:
        import torch

        lines.append(f"torch {torch.__version__}")
        if torch.cuda.is_available():
            lines.append(f"GPU: {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}")
        else:
            lines.append("GPU: none visible")
    except ImportError:
        pass
    return "; ".join(lines)


def speedups(rows: list[dict[str, float]]) -> list[float]:
    """Each row's trials/h over the first 1-per-GPU row's, wherever it is in ``rows`` (nan for
    all when no row packs 1 per GPU)."""
    base = next((r for r in rows if int(r["per_gpu"]) == 1), None)
    if base is None or not base["trials_per_hour"] > 0:
        return [float("nan")] * len(rows)
    return [r["trials_per_hour"] / base["trials_per_hour"] for r in rows]


def render(
    rows: list[dict[str, float]],
    packings: list[Packing],
    start: StartCost,
    *,
    command: str,
    config: Path,
    cpus: float,
    smoke: bool,
    warm_s: float,
) -> str:
    gains = speedups(rows)
    out = [
        "# GPU packing: trials per GPU vs throughput, GPU busy time and per-trial overhead",
        "",
        f"command: {command}",
        f"machine: {machine()}",
        f"config: {config.relative_to(ROOT) if config.is_relative_to(ROOT) else config} "
        f"(task {'digits, smoke run' if smoke else _task(config)}), sampler "
        f"random seed 0 (trial k has the same knobs in every packing), {cpus:g} CPUs per "
        "trial, concurrency = trials per GPU, latency measured by the search's meter "
        "under the row's latency.isolation (as the search resolved it)",
        f"GPU samples: {packings[0].gpu_source}, every few tenths of a second (NVML utilisation: "
        "the share of time a kernel was running)",
        f"new worker process: {start.total_s:.2f} s = {start.imports_s:.2f} s imports "
        f"+ {start.device_s:.2f} s device set-up + "
        f"{start.total_s - start.imports_s - start.device_s:.2f} s interpreter (median of 3)",
        "warm-up search before the packings (1 trial: makes the data, trains the dense baseline "
        f"on the GPU, picks the int8 format; all cached, so no packing pays them): {warm_s:.0f} s",
        "",
        "fixed s = wall - trial window: Ray start, dry run, baseline measurement, int8 choice "
        "(cached by the warm-up), shut-down",
        "",
        "per GPU  isolation  trials  window s  wall s  fixed s  trials/h  x vs 1   "
        "trials/h(wall)  GPU busy  GPU MiB  trial s  train s  export s  measure s  "
        "gate wait s  record s",
    ]
    for r, p, gain in zip(rows, packings, gains, strict=True):
        out.append(
            f"{int(r['per_gpu']):>7}  {p.isolation:>9}  {int(r['finished']):>6}  "
            f"{r['window_s']:>8.1f}  {r['wall_s']:>6.1f}  {r['wall_s'] - r['window_s']:>7.1f}  "
            f"{r['trials_per_hour']:>8.0f}  {gain:>5.2f}x  "
            f"{r['trials_per_hour_wall']:>14.0f}  {r['gpu_busy']:>8.0%}  "
            f"{r['gpu_mem_max_mib']:>7.0f}  {r['trial_s_mean']:>7.1f}  {r['train_s_mean']:>7.1f}  "
            f"{r['export_s_mean']:>8.1f}  {r['measure_s_mean']:>9.1f}  "
            f"{r['gate_wait_s_mean']:>11.2f}  {r['record_s_mean']:>8.2f}"
        )
    out += [
        "",
        "overhead per trial (s): worker starts (workers x new process) + CUDA set-up and data "
        "loading as the trials logged them",
        "per GPU isolation  workers  worker start/trial  set-up/trial  first trial of a "
        "worker  later trials  overhead / trial time  overhead / train time  slot idle",
    ]
    for r, p in zip(rows, packings, strict=True):
        out.append(
            f"{p.label:>16}  {int(r['workers']):>7}  "
            f"{r['worker_start_s_per_trial']:>18.2f}  "
            f"{r['setup_s_per_trial']:>12.2f}  {r['first_trial_setup_s']:>23.2f}  "
            f"{r['later_trial_setup_s']:>12.3f}  {r['overhead_fraction']:>21.1%}  "
            f"{r['overhead_vs_train']:>21.1%}  {r['slot_idle_fraction']:>9.1%}"
        )
    best = max(range(len(rows)), key=lambda i: rows[i]["trials_per_hour"])
    gain = gains[best]
    worst = max(r["overhead_fraction"] for r in rows)
    fixed = max(r["wall_s"] - r["window_s"] for r in rows)
    out += [
        "",
        f"target 1: packed trials >= 4x the throughput of one trial per GPU: best "
        f"{gain:.2f}x at {packings[best].label} -> {'MET' if gain >= 4 else 'MISSED'}",
        f"target 2: per-trial overhead <= 10% of trial time: worst {worst:.1%} -> "
        f"{'MET' if worst <= 0.10 else 'MISSED'}",
        f"target 3: fixed cost per search <= 20 s: worst {fixed:.1f} s -> "
        f"{'MET' if fixed <= 20 else 'MISSED'}",
        "",
        "latency held? each row's recorded medians / the same ONNX files timed again on the "
        "quiet machine afterwards (--quiet-check):",
        *(f"  {p.label:>16}: {p.quiet.line()}" for p in packings if p.quiet is not None),
        "",
        "per trial (trial number: seconds of run, train, export; worker pid, its trial index):",
    ]
    for p in packings:
        cells = []
        for run in sorted(p.finished(), key=lambda r: int(r.data.tags["slimtune.trial_number"])):
            dur = (run.info.end_time - run.info.start_time) / 1e3
            cells.append(
                f"{run.data.tags['slimtune.trial_number']}:{dur:.1f}/"
                f"{_m(run, 'train_seconds'):.1f}/{_m(run, 'export_seconds'):.1f} "
                f"w{run.data.tags.get('worker_pid', '?')}#{int(_m(run, 'worker_trial_index'))}"
            )
        out.append(f"  {p.label}: " + ", ".join(cells))
    return "\n".join(out) + "\n"


def plan_runs(
    per_gpu: Sequence[int], isolation: Sequence[str | None]
) -> list[tuple[int, str | None]]:
    """The searches to run, in order: each packing under each isolation mode, except 1 per GPU
    (the reference, no packing to isolate from), which runs once under the first mode."""
    modes = list(isolation) or [None]
    return [(n, m) for n in per_gpu for m in (modes[:1] if n == 1 else modes)]


def _task(config: Path) -> str:
    return str(yaml.safe_load(config.read_text()).get("task"))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--per-gpu", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--rounds", type=int, default=3, help="trials = rounds x per-gpu")
    p.add_argument("--cpus", type=float, default=2.0, help="CPUs per trial")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--workdir", type=Path, help="default: a new temporary directory")
    p.add_argument("--sample-s", type=float, default=0.2)
    p.add_argument("--timeout-s", type=float, default=900, help="per search")
    p.add_argument("--out", type=Path, help="also write the report here")
    p.add_argument("--smoke", action="store_true", help="CPU only, tiny task: checks the script")
    p.add_argument(
        "--no-warmup", dest="warmup", action="store_false", help="skip the warm-up search"
    )
    p.add_argument(
        "--pause-trials",
        choices=["true", "false"],
        help="set latency.pause_trials in every search (default: as the config says)",
    )
    p.add_argument(
        "--isolation",
        nargs="+",
        choices=["auto", "pause", "cores", "none"],
        default=[],
        help="run every packing under each latency.isolation given (default: the config's)",
    )
    p.add_argument(
        "--quiet-check",
        type=int,
        default=0,
        metavar="N",
        help="afterwards, time N trials' ONNX files per row again on the quiet machine",
    )
    a = p.parse_args(argv)
    pause = None if a.pause_trials is None else a.pause_trials == "true"
    command = "python benchmarks/gpu_packing.py " + " ".join(
        shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:])
    )
    workdir = (a.workdir or Path(tempfile.mkdtemp(prefix="gpu-packing-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(a.config.read_text())
    start = measure_start_cost("cpu" if a.smoke else "cuda")
    print(f"new worker process: {start}", flush=True)
    warm_s = 0.0
    if a.warmup:
        # Not measured: makes the data, the dense baseline and the int8 format choice (each once
        # per machine and cached), so that no packing pays them.
        first = a.isolation[0] if a.isolation else None
        cfg = search_config(
            base,
            per_gpu=1,
            trials=1,
            cpus=a.cpus,
            smoke=a.smoke,
            pause_trials=pause,
            isolation=first,
        )
        cfg.update(experiment="gpu-packing-warmup")
        cfg["space"] = {**cfg["space"], "bits": {"choices": [8]}}
        warm_s = run_packing(cfg, workdir, 1, a.sample_s, a.timeout_s).wall_s
        print(f"warm-up search (data, baseline, int8 format; not counted): {warm_s:.0f} s")
    packings, rows = [], []
    report = ""

    def publish() -> str:
        """The report of the rows so far, written to ``--out`` too."""
        text = render(
            rows,
            packings,
            start,
            command=command,
            config=a.config.resolve(),
            cpus=a.cpus,
            smoke=a.smoke,
            warm_s=warm_s,
        )
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(text)
        return text

    for per_gpu, isolation in plan_runs(a.per_gpu, a.isolation):
        cfg = search_config(
            base,
            per_gpu=per_gpu,
            trials=a.rounds * per_gpu,
            cpus=a.cpus,
            smoke=a.smoke,
            pause_trials=pause,
            isolation=isolation,
        )
        t0 = time.perf_counter()
        packing = run_packing(cfg, workdir, per_gpu, a.sample_s, a.timeout_s)
        packings.append(packing)
        rows.append(summarize(packing, start))
        print(
            f"{packing.label}: {rows[-1]['finished']:.0f} trials in "
            f"{time.perf_counter() - t0:.0f} s, {rows[-1]['trials_per_hour']:.0f} trials/h, "
            f"GPU busy {rows[-1]['gpu_busy']:.0%}",
            flush=True,
        )
        report = publish()  # after each packing: a run cut short keeps what it measured
    if a.quiet_check > 0:  # every search has ended: the machine is quiet
        lat = search_config(base, per_gpu=1, trials=1, cpus=a.cpus, smoke=a.smoke)["latency"]
        for packing in packings:
            packing.quiet = quiet_check(
                packing.finished(),
                task_ref="digits" if a.smoke else _task(a.config),
                threads=int(lat.get("threads", 1)),
                warmup=int(lat.get("warmup", 20)),
                repeats=int(lat.get("repeats", 200)),
                limit=a.quiet_check,
            )
        report = publish()
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
