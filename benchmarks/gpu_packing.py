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
import math
import os
import shlex
import shutil
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
from benchmarks._gpu_sampler import GpuSampler  # noqa: E402
from benchmarks._packing_table import render, summarize, task_of  # noqa: E402
from benchmarks._quiet_check import QuietCheck, quiet_check  # noqa: E402

DEFAULT_CONFIG = ROOT / "examples" / "mnist1d_large_gpu.yaml"
# The command's line naming the search's MLflow run ("slimtune: experiment 'x', search run ..."),
# printed once Ray, the latency meter, the dry run and the scheme check are done.
RUN_LINE = "search run "


@dataclass
class StartCost:
    """A fresh Python process that imports the trainable, opens the tracking store as a trial
    worker does before its first trial's run starts, and sets up the training device."""

    total_s: float
    imports_s: float
    device_s: float
    store_s: float = 0.0  # MlflowClient on an existing sqlite store (its SQLAlchemy set-up)

    @property
    def process_s(self) -> float:
        """What a new worker pays that no trial logs: interpreter start, imports and the
        store's opening (its CUDA set-up is logged by its first trial as
        ``device_init_seconds``)."""
        return self.total_s - self.device_s


# Run in a fresh process; argv[1]: the training device, argv[2]: a sqlite store's URI.
_START_CODE = """
import sys, time
t0 = time.perf_counter()
import orchestrator._trainable
from mlflow.tracking import MlflowClient
from trials._device import prepare_device, training_device
t1 = time.perf_counter()
MlflowClient(tracking_uri=sys.argv[2])
t2 = time.perf_counter()
d = prepare_device(training_device(sys.argv[1]))
print(t1 - t0, t2 - t1, d)
"""


def measure_start_cost(device: str, repeats: int = 3) -> StartCost:
    store = Path(tempfile.mkdtemp(prefix="start-cost-")) / "mlflow.db"
    uri = f"sqlite:///{store}"
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    # Untimed: makes the store (its schema) as a search's driver does before any worker starts.
    make = "import sys, mlflow; mlflow.MlflowClient(sys.argv[1]).search_experiments()"
    subprocess.run([sys.executable, "-c", make, uri], capture_output=True, check=True, env=env)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", _START_CODE, device, uri],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout
        total = time.perf_counter() - t0
        imports, opened, dev = (float(v) for v in out.split()[-3:])
        runs.append(StartCost(total, imports, dev, opened))
    shutil.rmtree(store.parent, ignore_errors=True)
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
    began: float = float("nan")  # epoch seconds when the command was launched
    run_line_s: float = float("nan")  # seconds to its line naming the search's MLflow run

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
        began = time.time()
        code, stdout, stderr, run_line_s, wall = _stamped_search(path.name, workdir, env, timeout_s)
    if code != 0:
        raise SystemExit(
            f"the search with {per_gpu} trials per GPU failed (exit {code}):\n"
            + stdout[-3000:]
            + stderr[-3000:]
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
        began=began,
        run_line_s=run_line_s,
    )


def _stamped_search(
    config: str, workdir: Path, env: dict[str, str], timeout_s: float
) -> tuple[int, str, str, float, float]:
    """Run `slimtune search CONFIG`; return its exit code, output, error output, the seconds
    to the line naming its MLflow run (nan if none) and its wall seconds."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "search", config],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        assert proc.stdout is not None
        lines, run_line = [], float("nan")
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                lines.append(line)
                if math.isnan(run_line) and RUN_LINE in line:
                    run_line = time.perf_counter() - t0
            code = proc.wait()
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        err.seek(0)
        return code, "".join(lines), err.read(), run_line, wall


def plan_runs(
    per_gpu: Sequence[int], isolation: Sequence[str | None]
) -> list[tuple[int, str | None]]:
    """The searches to run, in order: each packing under each isolation mode, except 1 per GPU
    (the reference, no packing to isolate from), which runs once under the first mode."""
    modes = list(isolation) or [None]
    return [(n, m) for n in per_gpu for m in (modes[:1] if n == 1 else modes)]


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
    packings: list[Packing] = []
    rows: list[dict[str, float]] = []
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
                task_ref="digits" if a.smoke else task_of(a.config),
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
