"""``slimtune select``: constraints (absolute or relative to the baseline), the objective to
optimize, the ONNX file, and ``--register`` into the MLflow Model Registry after re-measuring
the finalists' latency side by side."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reports import Constraints, Selection

# reports.OPTIMIZABLE, repeated here so that building the parser imports nothing heavy.
OPTIMIZE_CHOICES = ("accuracy", "latency_ms", "latency_p90_ms", "size_bytes", "size_gzip_bytes")
REMEASURE_WARMUP = 20


def add_select_options(c: argparse.ArgumentParser) -> None:
    """The options of ``select`` beyond the original three constraints and ``--out``."""
    c.add_argument(
        "--max-accuracy-drop",
        type=float,
        metavar="POINTS",
        help="accuracy at most this many percentage points below the dense baseline's",
    )
    c.add_argument("--max-gzip-kb", type=float, help="gzip size limit of the ONNX file in KB")
    c.add_argument("--max-latency-p90-ms", type=float, help="batch-1 p90 latency limit in ms")
    c.add_argument(
        "--optimize",
        default="accuracy",
        choices=OPTIMIZE_CHOICES,
        help="the metric to make best among trials meeting the constraints (default accuracy)",
    )
    c.add_argument(
        "--register",
        metavar="NAME",
        help="re-measure the finalists' latency side by side, then create a Model Registry "
        "version of NAME with the chosen ONNX file and a decision record",
    )
    c.add_argument(
        "--remeasure-repeats",
        type=int,
        default=200,
        metavar="N",
        help="timed runs per finalist when re-measuring latency (default 200)",
    )


def run_select(args: argparse.Namespace) -> int:
    from orchestrator._store import existing_store, store_errors, writable_file_parent
    from reports import Constraints
    from searchspace import ConfigError

    if args.remeasure_repeats < 5:
        raise ConfigError(
            field="--remeasure-repeats",
            value=args.remeasure_repeats,
            rule="must be >= 5 (a median of fewer runs is noise)",
            fix="pass a whole number >= 5, e.g. 200",
        )
    constraints = Constraints(
        min_accuracy=args.min_accuracy,
        max_size_kb=args.max_size_kb,
        max_latency_ms=args.max_latency_ms,
        max_accuracy_drop=args.max_accuracy_drop,
        max_gzip_kb=args.max_gzip_kb,
        max_latency_p90_ms=args.max_latency_p90_ms,
    )
    uri = existing_store(args.tracking_uri, Path.cwd())  # never creates an empty store
    out = writable_file_parent(args.out) if args.out is not None else None
    with store_errors(uri):
        return _run_select(args, uri, constraints, out)


def _run_select(
    args: argparse.Namespace, uri: str, constraints: Constraints, out: Path | None
) -> int:
    from orchestrator._tracking import redact_uri
    from reports import (
        decision_record,
        download_model,
        load_search,
        pareto_ranks,
        register_selection,
        select,
        varying_knobs,
        with_remeasured_latency,
    )

    runs = load_search(uri, args.experiment, parent_run_id=args.run_id)
    # The front by the search's own rule (noise-aware, its tolerances), as every surface shows it.
    ranked = pareto_ranks(runs.trials, runs.objectives, tolerances=runs.tolerances)
    knobs = varying_knobs(runs.parent_params, ranked)
    choice = select(ranked, constraints, optimize=args.optimize, baseline=runs.baseline)
    remeasurement: dict[str, Any] | None = None
    if args.register:
        finalists = [choice.chosen, *(r for _, r in choice.runners_up.iterrows())]
        ids = [str(r["run_id"]) for r in finalists]
        remeasurement = remeasure_latency(uri, ids, repeats=args.remeasure_repeats)
        medians = {k: v["latency_ms"] for k, v in remeasurement["results"].items()}
        df = with_remeasured_latency(ranked, medians)
        choice = select(df, constraints, optimize=args.optimize, baseline=runs.baseline)
        _print_remeasurement(remeasurement, finalists)
    _print_choice(choice, knobs)
    if out is not None:
        path = download_model(uri, str(choice.chosen["run_id"]), out)
        print(f"ONNX file written to {path}")
    if args.register:
        record = decision_record(choice, runs, remeasurement=remeasurement)
        version = register_selection(uri, args.register, choice, record)
        print(
            f"registered: model {version.name!r} version {version.version} (run "
            f"{version.run_id}, source {version.source}); decision record "
            f"{version.tags.get('slimtune.decision')} on the run. Tracking {redact_uri(uri)}"
        )
    return 0


def remeasure_latency(
    tracking_uri: str,
    run_ids: Sequence[str],
    *,
    repeats: int = 200,
    warmup: int = REMEASURE_WARMUP,
    threads: int = 1,
) -> dict[str, Any]:
    """Time the ONNX files of ``run_ids`` side by side in ONNX Runtime on this machine.

    Each file gets a session like the trials' (``threads`` intra-op threads, one inter-op
    thread, sequential), ``warmup`` untimed runs, then ``repeats`` rounds in which every file
    runs once, in an order rotated each round, so that drift in the machine's speed hits all
    finalists alike. The input is the model's own batch-1 input shape filled with fixed random
    values (latency does not depend on the values). Returns the method and, per run id, the
    median and p90 in ms.
    """
    from reports import download_model

    with tempfile.TemporaryDirectory() as tmp:
        paths = [
            download_model(tracking_uri, run_id, Path(tmp) / f"{i}" / "model.onnx")
            for i, run_id in enumerate(run_ids)
        ]
        t0 = time.perf_counter()
        times = time_interleaved(paths, repeats=repeats, warmup=warmup, threads=threads)
        seconds = time.perf_counter() - t0
    results = {
        run_id: {
            "latency_ms": statistics.median(ts),
            "latency_p90_ms": p90(ts),
        }
        for run_id, ts in zip(run_ids, times, strict=True)
    }
    return {
        "method": (
            f"{len(run_ids)} finalists timed side by side in ONNX Runtime on this machine: "
            f"batch 1, {threads} intra-op thread(s), {warmup} warm-up runs each, then "
            f"{repeats} interleaved rounds (order rotated per round); median and p90 in ms"
        ),
        "repeats": repeats,
        "warmup": warmup,
        "threads": threads,
        "seconds": seconds,
        "results": results,
    }


def _print_remeasurement(m: dict[str, Any], finalists: list[Any]) -> None:
    print(
        f"re-measured latency of {len(finalists)} finalists side by side ({m['repeats']} rounds):"
    )
    for row in finalists:
        new = m["results"][str(row["run_id"])]["latency_ms"]
        print(
            f"  trial {int(row['trial_number'])}: logged {float(row['latency_ms']):.4g} ms, "
            f"now {new:.4g} ms"
        )


def _print_choice(choice: Selection, knobs: list[str]) -> None:
    from reports import knobs_text, latency_flag

    best = choice.chosen
    flag = latency_flag(best)
    print(
        f"chosen: trial {int(best['trial_number'])} (run {best['run_id']}) of "
        f"{choice.feasible} trials meeting the constraints ({choice.describe_bounds()}); "
        f"optimizing {choice.optimize}\n"
        f"  {knobs_text(best, knobs)} artifact={best.get('artifact', '?')}\n"
        f"  accuracy={best['accuracy']:.4f} size={best['size_bytes'] / 1000:.1f} KB "
        f"gzip={best['size_gzip_bytes'] / 1000:.1f} KB latency={best['latency_ms']:.3f} ms "
        f"(p90 {best['latency_p90_ms']:.3f} ms)" + (f" [latency {flag}]" if flag else "")
    )
    print(f"  {_front_line(best)}")
    for _, r in choice.runners_up.iterrows():
        flag = latency_flag(r)
        print(
            f"  runner-up: trial {int(r['trial_number'])} {knobs_text(r, knobs)} "
            f"accuracy={r['accuracy']:.4f} size={r['size_bytes'] / 1000:.1f} KB "
            f"latency={r['latency_ms']:.3f} ms{f' [latency {flag}]' if flag else ''}: "
            f"{choice.why_lost(r)}"
        )


def _front_line(row: Any) -> str:
    """Where the trial stands on the noise-aware front (docs/noise.md)."""
    rank = row.get("pareto_rank")
    if rank is None or str(rank) in ("<NA>", "nan"):
        return "Pareto front: not ranked"
    if int(rank) > 0:
        return f"Pareto front: no (rank {int(rank)} under noise-aware dominance)"
    tied = str(row.get("pareto_tied") or "")
    group = row.get("pareto_group")
    if not tied:
        return "Pareto front: yes (no other trial ties it within the tolerances)"
    return (
        f"Pareto front: yes, in the group of trial {int(group)}; tied within the tolerances "
        f"with trials {tied}"
    )


def time_interleaved(
    paths: Sequence[Path], *, repeats: int, warmup: int, threads: int = 1
) -> list[list[float]]:
    """Batch-1 times in ms of the ONNX files ``paths``, timed side by side in ONNX Runtime:
    each gets a session like the trials' (``threads`` intra-op threads, one inter-op thread,
    sequential), ``warmup`` untimed runs, then ``repeats`` rounds in which every file runs once,
    in an order rotated each round, so that drift in the machine's speed hits all files alike.
    The input is the model's own batch-1 input shape filled with fixed random values."""
    import numpy as np
    import onnxruntime as ort

    sessions = []
    for path in paths:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inp = session.get_inputs()[0]
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        shape[0] = 1
        dtype = np.float16 if "float16" in inp.type else np.float32
        x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
        sessions.append((session, {inp.name: x}))
    for session, feed in sessions:
        for _ in range(warmup):
            session.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    n = len(sessions)
    for r in range(repeats):
        for j in range(n):
            k = (j + r) % n
            session, feed = sessions[k]
            start = time.perf_counter_ns()
            session.run(None, feed)
            times[k].append((time.perf_counter_ns() - start) / 1e6)
    return times


def p90(times: Sequence[float]) -> float:
    import numpy as np

    return float(np.percentile(times, 90))
