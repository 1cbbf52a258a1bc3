"""Where a search's fixed seconds go: a timeline of one small search's stages.

    python benchmarks/search_fixed_cost.py [--config FILE] [--trials 2] [--workdir DIR]
        [--runs 2] [--out FILE] [--smoke]

Runs ``run_search`` (the real search: Ray, the meter actor, MLflow, the trials) ``--runs``
times in one work directory (the first makes the data, the dense baseline and the int8 choice;
the later ones find them cached, as every search after the first on a machine does) and
records when each stage of the driver started and ended: the dry run (in its thread), Ray's
start, the latency meter's start, the baseline (load and measurement), the int8 format choice,
Ray Tune (its trial window read from the trials' MLflow runs), the report, Ray's shut-down. It
wraps the stages' functions in ``orchestrator._search`` to time them, and changes nothing else.

Fixed cost = wall - trial window (first trial run's start to the last one's end), minus the
baseline's training when it was not cached. The machine may be loaded: read shares, not
absolute seconds. Target (issue 14): 20 s or less.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orchestrator._ray_session as ray_mod  # noqa: E402
import orchestrator._schemes as schemes_mod  # noqa: E402
import orchestrator._search as search_mod  # noqa: E402
from orchestrator._ray_session import SearchOptions  # noqa: E402
from orchestrator._search import run_search  # noqa: E402
from searchspace import SearchSpec  # noqa: E402

STAGES = {
    "check_task": "dry run (thread)",
    "start_ray": "Ray start",
    "running_meter": "meter start",
    "measure_baseline": "baseline",
    "resolve_int8_format": "int8 choice",
    "check_named_int8_format": "int8 kernel check",
    "run_tune": "Ray Tune (trials)",
    "publish_front": "report",
}

SMOKE = """
experiment: fixed-cost
task: digits
trials: 2
concurrency: 2
space:
  lr: {low: 1.0e-4, high: 2.0e-3, log: true}
  batch_size: {choices: [128]}
  sparsity: {low: 0.0, high: 0.5}
  bits: {choices: [8, 32]}
sampler: {name: random, seed: 0}
training: {epochs: 1}
latency: {warmup: 3, repeats: 20}
"""


class Timeline:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.spans: list[tuple[str, float, float]] = []
        self._lock = threading.Lock()

    def add(self, name: str, start: float, end: float) -> None:
        with self._lock:
            self.spans.append((name, start - self.t0, end - self.t0))


def _timed(fn: Callable[..., Any], name: str, line: Timeline) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            line.add(name, start, time.perf_counter())

    return wrapper


def _timed_cm(fn: Callable[..., Any], name: str, line: Timeline) -> Callable[..., Any]:
    """A context manager factory timed until it yields (its start, not its block)."""

    @functools.wraps(fn)
    @contextlib.contextmanager
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        start = time.perf_counter()
        with fn(*args, **kwargs) as value:
            line.add(name, start, time.perf_counter())
            yield value

    return wrapper


@contextlib.contextmanager
def instrumented(line: Timeline) -> Iterator[None]:
    where = {name: search_mod for name in STAGES} | {
        "start_ray": ray_mod,
        "check_task": schemes_mod,
    }
    saved = {name: getattr(where[name], name) for name in STAGES}
    try:
        for name in STAGES:
            wrap = _timed_cm if name == "running_meter" else _timed
            setattr(where[name], name, wrap(saved[name], name, line))
        yield
    finally:
        for name, fn in saved.items():
            setattr(where[name], name, fn)


def one_search(spec: SearchSpec, config: Path, workdir: Path) -> tuple[Timeline, float, float]:
    """Run the search; return its timeline, wall seconds and trial window seconds."""
    from mlflow.tracking import MlflowClient

    line = Timeline()
    with instrumented(line):
        outcome = run_search(
            spec, SearchOptions(config_path=config, workdir=workdir), out=io.StringIO()
        )
    wall = time.perf_counter() - line.t0
    client = MlflowClient(outcome.tracking_uri)
    runs = client.search_runs(
        [outcome.experiment_id], f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}'"
    )
    start = min(r.info.start_time for r in runs) / 1e3
    end = max(r.info.end_time for r in runs) / 1e3
    return line, wall, end - start


def render(index: int, line: Timeline, wall: float, window: float) -> list[str]:
    fixed = wall - window
    out = [f"search {index}: wall {wall:.1f} s, trial window {window:.1f} s, fixed {fixed:.1f} s"]
    for name, start, end in sorted(line.spans, key=lambda s: s[1]):
        dur = end - start
        share = f"{dur / fixed:>6.0%} of fixed" if name != "run_tune" else " " * 15
        out.append(f"  {STAGES[name]:<18} {start:>7.1f} -> {end:>7.1f} s  {dur:>6.1f} s {share}")
    out.append("  (dry run overlaps Ray's and the meter's start; spans may overlap)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, help="a search config (default: a 2-trial digits one)")
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--runs", type=int, default=2, help="searches in one work directory")
    p.add_argument("--workdir", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--smoke", action="store_true", help="the default config, 2 searches")
    a = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    workdir = (a.workdir or Path(tempfile.mkdtemp(prefix="fixed-cost-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load(a.config.read_text() if a.config and not a.smoke else SMOKE)
    raw.update(trials=a.trials)
    raw.setdefault("tracking", {})["uri"] = None
    config = workdir / "fixed-cost.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    spec = SearchSpec.model_validate(raw)
    lines = [f"$ python {shlex.join(['benchmarks/search_fixed_cost.py', *(argv or sys.argv[1:])])}"]
    lines.append(
        f"{time.strftime('%Y-%m-%d %H:%M')}; {os.cpu_count()} CPUs; load average "
        f"{os.getloadavg()[0]:.2f}; task {spec.task}, {a.trials} trials"
    )
    print("\n".join(lines), flush=True)
    for i in range(a.runs):
        lines += (search := render(i, *one_search(spec, config, workdir)))
        print("\n".join(search), flush=True)  # as each search ends: a run cut short keeps it
    text = "\n".join(lines)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
