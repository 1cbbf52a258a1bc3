"""A trial's own time, A against B: two checkouts of slimtune run the same digits trials.

    python benchmarks/trial_time.py [--before DIR] [--repeats 3] [--out FILE] [--smoke]

Each round starts one fresh process per checkout (``PYTHONPATH`` set to ``--before``, a
checkout of an earlier commit such as ``git worktree add /tmp/before <commit>``, and to this
checkout; the order swapped every round). The process runs, on the built-in digits task (its
dense baseline trained once, untimed, in a shared cache), in this order:

- ``first trial``: an fp32 trial at sparsity 0.5, the first of the process (it pays the lazy
  imports and whatever an exporter builds once), as a Ray worker's first trial does;
- ``export``: three exports of the dense model (``trials._export.export_onnx``), the median;
- ``masks``: the unstructured pruning masks of the dense model at sparsity 0.5
  (``trials._compress.magnitude_masks``, global scope), the median of ten;
- one trial per scheme below, each after the first: fp32 unstructured, int8 unstructured,
  int4 structured (sparsity 0.5, 1 epoch, a short latency plan).

The table holds the medians over rounds. Without ``--before`` only this checkout runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMES = (
    ("fp32 unstructured", 32, "unstructured"),
    ("int8 unstructured", 8, "unstructured"),
    ("int4 structured", 4, "structured"),
)


def child(cache: Path, work: Path, smoke: bool) -> dict[str, float]:
    """Run in a fresh process: the timings above, in seconds."""
    from searchspace import TrialParams
    from trials import TrialSettings, run_trial
    from trials._compress import magnitude_masks, prunable_layers
    from trials._export import export_onnx
    from trials._registry import load_task

    task = load_task("digits")

    def trial(name: str, bits: int, pruning: str) -> float:
        settings = TrialSettings(
            epochs=1,
            seed=0,
            cache_dir=cache,
            work_dir=work / name.replace(" ", "-"),
            latency_warmup=3,
            latency_repeats=10 if smoke else 20,
        )
        params = TrialParams(lr=1e-3, batch_size=128, sparsity=0.5, bits=bits, pruning=pruning)
        t0 = time.perf_counter()
        run_trial(task, params, settings)
        return time.perf_counter() - t0

    times = {"first trial": trial("first", 32, "unstructured")}
    model, example = task.build_model(), task.example_input()
    exports = []
    for i in range(1 if smoke else 3):
        t0 = time.perf_counter()
        export_onnx(model, example, work / f"dense{i}.onnx", what="benchmark")
        exports.append(time.perf_counter() - t0)
    times["export"] = statistics.median(exports)
    weights = [layer.weight.detach() for layer in prunable_layers(model)]
    masks = []
    for _ in range(3 if smoke else 10):
        t0 = time.perf_counter()
        magnitude_masks(weights, 0.5)
        masks.append(time.perf_counter() - t0)
    times["masks"] = statistics.median(masks)
    for name, bits, pruning in SCHEMES[:1] if smoke else SCHEMES:
        times[name] = trial(name, bits, pruning)
    return times


def run_child(code: Path, cache: Path, smoke: bool) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(code), "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory() as work:
        args = ["--child", "--cache", str(cache), "--work", work] + (["--smoke"] if smoke else [])
        proc = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "trial_time.py"), *args],
            cwd=code,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        raise SystemExit(f"the trials of {code} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, help="a checkout of an earlier commit")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="one round, fewer timings")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.cache, args.work, args.smoke)))
        return
    # Here, not at the top: a child's trials code must come from its own PYTHONPATH.
    sys.path.insert(0, str(ROOT))
    from benchmarks._ab import in_turn

    codes = {"this checkout": ROOT}
    if args.before is not None:
        codes = {"before": args.before.resolve(), **codes}
    with tempfile.TemporaryDirectory() as cache_dir:
        cache = Path(cache_dir)
        run_child(ROOT, cache, smoke=True)  # trains the dense baseline once, untimed
        repeats = 1 if args.smoke else args.repeats
        runs = in_turn(codes, repeats, lambda code: run_child(code, cache, args.smoke))
    keys = list(next(iter(runs.values()))[0])
    lines = ["| seconds | " + " | ".join(codes) + " |", "|---|" + "---:|" * len(codes)]
    for key in keys:
        cells = []
        for name in codes:
            values = [r[key] for r in runs[name]]
            cells.append(
                f"{statistics.median(values):.3f} ({', '.join(f'{v:.2f}' for v in values)})"
            )
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out is not None:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
