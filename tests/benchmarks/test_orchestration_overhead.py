"""The orchestration benchmark's arithmetic, its CPU accounting and its plain-Optuna baseline
(the slimtune side needs a Ray search and is run by hand: benchmarks/BENCHMARKS.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.entities import Metric, Run, RunData, RunInfo, RunTag

from benchmarks.orchestration_overhead import (
    FixedWork,
    Timed,
    Transition,
    TreeCpu,
    calibrate,
    run_plain_optuna,
    summarize,
    timeline_table,
    transitions,
)
from searchspace import TrialParams
from trials import TrialSettings

BUSY_0_3_S = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
CONFIG = Path(__file__).resolve().parents[2] / "examples" / "digits.yaml"


def test_summary_of_two_slots() -> None:
    runs = [
        Timed(100.0, 101.0, "a", 0.9),
        Timed(101.2, 102.2, "a", 0.9),  # 200 ms after a's first workload
        Timed(100.1, 101.1, "b", 1.0),
        Timed(101.5, 102.5, "b", 1.0),  # 400 ms after b's first
    ]
    ov = summarize(runs, 2)
    assert ov.work_s == pytest.approx(4.0) and ov.work_cpu_s == pytest.approx(3.8)
    assert ov.span_s == pytest.approx(2.5) and ov.ideal_s == pytest.approx(2.0)
    assert ov.ratio == pytest.approx(1.25)
    assert ov.fixed_cost_ms == pytest.approx(250.0)  # (2.5 s x 2 - 4 s) / 4 trials
    assert ov.gap_median_ms == pytest.approx(300.0)
    # The 1 s of slot time not in workload: 0.1 before b started, 0.6 of gaps, 0.3 after a.
    assert ov.workers == 2
    assert (ov.lead_s, sum(ov.gaps_ms) / 1000, ov.tail_s) == pytest.approx((0.1, 0.6, 0.3))


def test_fixed_work_is_a_trial_body_that_reports_its_timing(tmp_path: Path) -> None:
    passes, rate = calibrate(0.05, probe_s=0.05)
    assert passes >= 1 and rate > 0
    settings = TrialSettings(epochs=1, seed=0, cache_dir=tmp_path, work_dir=tmp_path)
    params = TrialParams.from_dict({"lr": 1e-3, "batch_size": 32, "sparsity": 0.5, "bits": 8})
    result = FixedWork(passes)(None, params, settings)
    m = result.metrics
    assert m["bench_end"] > m["bench_start"] and m["bench_pid"] == os.getpid()
    assert m["bench_cpu"] > 0 and result.onnx_path.is_file()
    assert 0 < m["accuracy"] < 1 and m["size_gzip_bytes"] < m["size_bytes"]


def test_tree_cpu_counts_a_busy_child_process() -> None:
    with TreeCpu(os.getpid(), every=0.05) as cpu:
        start = time.time()
        subprocess.run([sys.executable, "-c", BUSY_0_3_S], check=True)
        time.sleep(0.1)
        end = time.time()
    used = cpu.between(start, end)
    assert used.get("ray services", 0.0) >= 0.2  # any child that is not a Ray worker
    assert "driver" in used


def test_plain_optuna_runs_the_same_workload_with_n_jobs() -> None:
    passes, _ = calibrate(0.02, probe_s=0.05)
    plain = run_plain_optuna(CONFIG, trials=4, concurrency=2, passes=passes)
    assert plain.overhead.trials == 4 and plain.overhead.concurrency == 2
    assert plain.overhead.span_s <= plain.wall_s
    assert plain.overhead.work_s > 0


def _run(trial_id: str, pid: int, work: tuple[float, float], run: tuple[float, float]) -> Run:
    info = RunInfo(
        run_id=trial_id,
        experiment_id="0",
        user_id="",
        status="FINISHED",
        start_time=int(run[0] * 1000),
        end_time=int(run[1] * 1000),
        lifecycle_stage="active",
    )
    metrics = [
        Metric("bench_start", work[0], 0, 0),
        Metric("bench_end", work[1], 0, 0),
        Metric("bench_pid", float(pid), 0, 0),
    ]
    return Run(info, RunData(metrics=metrics, tags=[RunTag("slimtune.trial_id", trial_id)]))


def test_timeline_splits_the_gap_between_two_trials_of_a_worker(tmp_path: Path) -> None:
    # Worker 7 runs t1 then t3; worker 8 runs only t2 (no transition of its own).
    runs = [
        _run("t1", 7, (10.000, 11.000), (9.990, 11.010)),
        _run("t3", 7, (11.050, 12.000), (11.040, 12.010)),
        _run("t2", 8, (10.100, 11.500), (10.090, 11.510)),
    ]
    events = tmp_path / "timeline.jsonl"
    lines = [
        ("start", "t1", 9.98),
        ("result", "t1", 11.013),
        ("result", "t1", 11.5),  # a later duplicate: the first one counts
        ("complete", "t1", 11.015),
        ("start", "t3", 11.030),
        ("result", "t2", 11.52),
        ("complete", "t2", 11.53),
    ]
    events.write_text("".join(json.dumps(e) + "\n" for e in lines))
    (t,) = transitions(runs, events)
    steps = {a: 1000 * (getattr(t, b) - getattr(t, a)) for _, a, b in Transition.STEPS}
    assert steps == pytest.approx(
        {
            "work_end": 10.0,  # MLflow after the workload
            "run_end": 3.0,  # report reaches the driver
            "result": 2.0,
            "complete": 15.0,
            "start": 10.0,
            "run_start": 10.0,  # MLflow before the workload
        },
        abs=1e-6,
    )
    assert sum(steps.values()) == pytest.approx(50.0)  # the whole gap, 11.000 -> 11.050
    table = "\n".join(timeline_table([t]))
    assert "| **whole gap** (1 transitions) | **50.0** | **50.0** |" in table
