"""What a `slimtune search` costs around its work: from the process start to its first line, and
from its last line to its exit, with the command's own exit and without it.

    python benchmarks/cli_exit.py [--repeats 3] [--workdir DIR] [--out FILE] [--smoke]

Runs the real command line, ``python -m orchestrator.cli search c.yaml`` (the ``slimtune``
command: ``orchestrator.cli.entry``, which freezes the garbage collector before the
interpreter's shut-down), and the same search through ``main()`` alone (``python -c "from
orchestrator.cli import main; raise SystemExit(main())"``: what the command did before), in
turn, ``--repeats`` times each, in one work directory whose cache a first, untimed search fills
(as every search after the first on a machine finds it). Each output line is time-stamped by
this script as it arrives; "exit" is the span from the search's last line to the process's
end (Ray's shut-down, the exit handlers, the interpreter's own shut-down).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VARIANTS = {
    "slimtune command (entry: gc.freeze, then exit)": ["-m", "orchestrator.cli"],
    "main() alone (plain interpreter exit)": [
        "-c",
        "import sys; from orchestrator.cli import main; sys.argv[0] = 'slimtune'; "
        "raise SystemExit(main())",
    ],
}


def timed_run(args: list[str], cwd: Path) -> tuple[float, float, float]:
    """Run ``python ARGS search c.yaml`` in ``cwd``; return (first line, last line, exit) in
    seconds from the start. Fails on a non-zero exit or no output."""
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "RAY_AUTH_MODE": "disabled",
        "PYTHONPATH": str(ROOT),
        "PYTHONWARNINGS": "ignore",
    }
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, *args, "search", "c.yaml"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    stamps = [time.monotonic() - t0 for _ in proc.stdout]
    code = proc.wait()
    end = time.monotonic() - t0
    if code != 0 or not stamps:
        raise SystemExit(f"the search exited {code} with {len(stamps)} lines")
    return stamps[0], stamps[-1], end


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="one repeat each")
    args = parser.parse_args(argv)
    from benchmarks.search_fixed_cost import SMOKE  # its config: the same small search

    repeats = 1 if args.smoke else args.repeats
    work = args.workdir or Path(tempfile.mkdtemp(prefix="slimtune-cli-exit-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "c.yaml").write_text(SMOKE)
    timed_run(VARIANTS[next(iter(VARIANTS))], work)  # fills the cache; not counted
    rows: dict[str, list[tuple[float, float, float]]] = {name: [] for name in VARIANTS}
    for _ in range(repeats):
        for name, variant in VARIANTS.items():
            rows[name].append(timed_run(variant, work))
    load = os.getloadavg()[0]
    lines = [
        f"$ python benchmarks/cli_exit.py {' '.join(argv or sys.argv[1:])}".rstrip(),
        f"{time.strftime('%Y-%m-%d %H:%M')}; {os.cpu_count()} CPUs; load average {load:.2f}; "
        f"{repeats} search(es) per variant, cached digits search of 2 trials",
        "| variant | to the first line s | whole run s | last line to exit s (each) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, runs in rows.items():
        first = statistics.median(r[0] for r in runs)
        whole = statistics.median(r[2] for r in runs)
        exits = [r[2] - r[1] for r in runs]
        each = ", ".join(f"{e:.2f}" for e in exits)
        lines.append(
            f"| {name} | {first:.1f} | {whole:.1f} | {statistics.median(exits):.2f} ({each}) |"
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
