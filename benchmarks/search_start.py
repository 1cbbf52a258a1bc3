"""The start of `slimtune search`, A against B: two checkouts of slimtune run the same command.

    python benchmarks/search_start.py --before DIR [--config FILE] [--repeats 3]
        [--workdir DIR] [--out FILE] [--smoke]

Runs ``python -m orchestrator.cli search c.yaml`` with ``PYTHONPATH`` set to ``--before`` (a
checkout of an earlier commit, e.g. ``git worktree add /tmp/before <commit>``) and to this
checkout, in turn (in the other order each round), ``--repeats`` times each, in one work
directory whose cache (data, dense baseline, int8 choice, scheme check) a first, untimed
search fills. Each output line is
time-stamped as it arrives. "start" is the time to the line that names the search's MLflow run
(printed once Ray, the latency meter, the task's dry run and the scheme check are done and the
run exists): what a change to the search's start moves. "whole" is the command's wall time.
The default config is the small digits search of ``search_fixed_cost.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._ab import in_turn  # noqa: E402

START_LINE = "search run "  # "slimtune: experiment 'x', search run <id>, tracking ..."


@dataclass(frozen=True)
class Run:
    start_s: float  # to the line naming the search run
    whole_s: float  # to the process's end


def timed_run(code_root: Path, config: Path, cwd: Path) -> Run:
    """One ``slimtune search`` with ``code_root`` first on the path; fails on a non-zero exit
    or a missing start line."""
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "RAY_AUTH_MODE": "disabled",
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(code_root), os.environ.get("PYTHONPATH", "")) if p
        ),
        "PYTHONWARNINGS": "ignore",
    }
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "search", str(config)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    start = None
    for line in proc.stdout:
        if start is None and START_LINE in line:
            start = time.monotonic() - t0
    code = proc.wait()
    whole = time.monotonic() - t0
    if code != 0 or start is None:
        raise SystemExit(f"{code_root}: the search exited {code}, start line seen: {start}")
    return Run(start, whole)


def table(rows: dict[str, list[Run]]) -> list[str]:
    lines = [
        "| code | start s (median; each) | whole s (median; each) |",
        "| --- | ---: | ---: |",
    ]
    for name, runs in rows.items():
        starts = [r.start_s for r in runs]
        wholes = [r.whole_s for r in runs]
        lines.append(
            f"| {name} | {statistics.median(starts):.1f} ({_each(starts)}) | "
            f"{statistics.median(wholes):.1f} ({_each(wholes)}) |"
        )
    return lines


def _each(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="an earlier checkout")
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="one repeat each")
    args = parser.parse_args(argv)
    before = args.before.resolve()
    if not (before / "orchestrator" / "cli.py").is_file():
        parser.error(f"--before {args.before}: no checkout of slimtune there (orchestrator/cli.py)")
    repeats = 1 if args.smoke else args.repeats
    work = args.workdir or Path(tempfile.mkdtemp(prefix="slimtune-search-start-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.config is None:
        from benchmarks.search_fixed_cost import SMOKE

        config = work / "c.yaml"
        config.write_text(SMOKE)
    else:
        config = args.config.resolve()
    codes = {f"before ({before})": before, f"this checkout ({ROOT})": ROOT}
    timed_run(ROOT, config, work)  # fills the caches; not counted
    rows = in_turn(codes, repeats, lambda code_root: timed_run(code_root, config, work))
    head = [
        f"$ python benchmarks/search_start.py {' '.join(argv or sys.argv[1:])}".rstrip(),
        f"{time.strftime('%Y-%m-%d %H:%M')}; {os.cpu_count()} CPUs "
        f"({len(os.sched_getaffinity(0))} usable); load average {os.getloadavg()[0]:.2f}; "
        f"config {config.name}; {repeats} search(es) each, in turn, caches filled first",
    ]
    text = "\n".join(head + table(rows))
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
