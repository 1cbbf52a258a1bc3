"""The report of benchmarks/gpu_packing.py: one row of figures per packing (from its trials'
MLflow runs and the GPU samples), the ratios against the 1-per-GPU row, the targets of issue 14
and the per-trial detail."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from mlflow.entities import Run

if TYPE_CHECKING:
    from benchmarks.gpu_packing import Packing, StartCost

ROOT = Path(__file__).resolve().parent.parent


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
        # The fixed cost, split: launch to the line naming the search's run; that line to the
        # first trial's run; the last trial's end to the command's exit (nan where unknown).
        "to_run_line_s": p.run_line_s,
        "run_line_to_first_s": first - p.began - p.run_line_s,
        "after_last_s": p.began + p.wall_s - last,
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
        f"(task {'digits, smoke run' if smoke else task_of(config)}), sampler "
        f"random seed 0 (trial k has the same knobs in every packing), {cpus:g} CPUs per "
        "trial, concurrency = trials per GPU, latency measured by the search's meter "
        "under the row's latency.isolation (as the search resolved it)",
        f"GPU samples: {packings[0].gpu_source}, every few tenths of a second (NVML utilisation: "
        "the share of time a kernel was running)",
        f"new worker process: {start.total_s:.2f} s = {start.imports_s:.2f} s imports "
        f"+ {start.store_s:.2f} s opening the tracking store + {start.device_s:.2f} s device "
        f"set-up + {start.total_s - start.imports_s - start.store_s - start.device_s:.2f} s "
        "interpreter (median of 3; all but the device set-up count as the worker's start)",
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
    out += [
        "",
        "fixed s, split: launch to the line naming the search's run (imports, Ray, the meter, "
        "dry run); that line to the first trial's run (baseline, int8 choice, Ray Tune, the first "
        "worker's start); the last trial's end to the exit (report, Ray's shut-down, exit)",
        "per GPU isolation  to the run line  run line to first trial  last trial to exit",
    ]
    for r, p in zip(rows, packings, strict=True):
        out.append(
            f"{p.label:>16}  {r['to_run_line_s']:>15.1f}  {r['run_line_to_first_s']:>23.1f}  "
            f"{r['after_last_s']:>18.1f}"
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
        *(
            line
            for p in packings
            if p.quiet is not None
            for line in (
                f"  {p.label:>16}: {p.quiet.line()}",
                *(f"{'':22}{c.line()}" for c in p.quiet.trials),
            )
        ),
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


def task_of(config: Path) -> str:
    return str(yaml.safe_load(config.read_text()).get("task"))
