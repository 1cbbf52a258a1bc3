"""Re-measure the dense baseline and a search's best candidates side by side, on a quiet machine.

    python benchmarks/remeasure_front.py EXPERIMENT [--tracking-uri URI] [--top 6]
        [--max-accuracy-drop 1.0] [--repeats 400] [--warmup 50] [--profile] [--json OUT]
    python benchmarks/remeasure_front.py --smoke

A trial's latency was measured while other trials trained; the speed-ups of
``compression_front.py`` divide two figures taken at different moments. This script downloads
the dense fp32 baseline (the parent run's ``baseline/model.onnx``) and the ``--top`` candidates
(the finished trials within ``--max-accuracy-drop`` points of the dense accuracy, the fastest by
their logged latency first) and times all of them in ONNX Runtime in interleaved rounds (batch
1, one thread: ``orchestrator._select_cmd.time_interleaved``), so drift hits every file alike.
It prints, per candidate, the knobs, accuracy, file size and ratio, and the re-measured median
and p90 latency and speed-up over the dense file measured in the same rounds.

``--profile`` also prints, per file, the time per ONNX operator type from ORT's own profiler
(where the time goes: MatMul, the QDQ pairs, LayerNorm, Softmax, ...).

``--smoke`` checks the script's path in seconds without a search: two small ONNX files (a
dense MLP and the same MLP with half its hidden units) timed for a few rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/remeasure_front.py` from anywhere
    sys.path.insert(0, str(ROOT))
from orchestrator._select_cmd import p90, time_interleaved  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("experiment", nargs="?")
    p.add_argument("--tracking-uri", default=f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    p.add_argument("--top", type=int, default=6, help="candidates re-measured with the dense")
    p.add_argument("--max-accuracy-drop", type=float, default=1.0, help="percentage points")
    p.add_argument("--repeats", type=int, default=400, help="interleaved rounds")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the table here")
    p.add_argument("--smoke", action="store_true", help="two tiny files, a few rounds")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also print each file's time per ONNX operator type (ORT's profiler, one thread)",
    )
    a = p.parse_args()
    if a.smoke:
        return _smoke()
    if not a.experiment:
        p.error("EXPERIMENT is required (or --smoke)")
    if a.top < 1 or a.repeats < 1:
        p.error(f"--top and --repeats must be >= 1 (got --top {a.top}, --repeats {a.repeats})")
    with tempfile.TemporaryDirectory() as tmp:
        rows, dense = _download(a, Path(tmp))
        times = time_interleaved(
            [dense["path"]] + [r["path"] for r in rows],
            repeats=a.repeats,
            warmup=a.warmup,
            threads=a.threads,
        )
        profiles = [_profile(r) for r in [dense, *rows]] if a.profile else []
        table = _table(dense, rows, times)  # reads the files' sizes: before they are deleted
    print(
        f"{a.experiment}: dense fp32 and {len(rows)} candidates within {a.max_accuracy_drop} "
        f"pts, {a.repeats} interleaved rounds, batch 1, {a.threads} thread(s), "
        f"{a.warmup} warm-up runs each"
    )
    _print(table)
    for row, prof in zip(table, profiles, strict=False):
        row["op_us_per_run"] = prof
        ops = ", ".join(f"{op} {us:.0f}" for op, us in list(prof.items())[:8])
        print(f"profile {row['label']} (us per run by op type): {ops}")
    if a.json:
        a.json.write_text(json.dumps(table, indent=1, default=str))
    return 0


def _profile(row: dict[str, Any]) -> dict[str, float]:
    from benchmarks._ort_profile import op_profile

    return op_profile(row["path"])


def _download(a: argparse.Namespace, tmp: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from mlflow import MlflowClient

    from reports import download_model, load_search

    runs = load_search(a.tracking_uri, a.experiment)
    base = runs.baseline
    df = runs.trials[runs.trials["status"] == "FINISHED"].copy()
    df = df[100 * (base["accuracy"] - df["accuracy"]) <= a.max_accuracy_drop]
    df = df.sort_values("latency_ms").head(a.top)
    client = MlflowClient(tracking_uri=a.tracking_uri)
    local = client.download_artifacts(
        runs.parent_run_id, "baseline/model.onnx", dst_path=str(tmp / "dense")
    )
    dense = {
        "label": "dense fp32",
        "path": Path(local),
        "accuracy": base["accuracy"],
        "size_bytes": base["size_bytes"],
    }
    rows = []
    for i, (_, r) in enumerate(df.iterrows()):
        knobs = {k: r[k] for k in ("pruning", "sparsity", "bits") if k in r}
        rows.append(
            {
                "label": f"trial {int(r['trial_number'])}",
                "knobs": knobs,
                "format": r.get("format"),
                "path": download_model(a.tracking_uri, r["run_id"], tmp / f"{i}" / "model.onnx"),
                "accuracy": float(r["accuracy"]),
                "size_bytes": float(r["size_bytes"]),
                "logged_latency_ms": float(r["latency_ms"]),
            }
        )
    return rows, dense


def _table(
    dense: dict[str, Any], rows: list[dict[str, Any]], times: list[list[float]]
) -> list[dict[str, Any]]:
    dense_ms = statistics.median(times[0])
    out = []
    for row, ts in zip([dense, *rows], times, strict=True):
        median = statistics.median(ts)
        out.append(
            {
                **{k: v for k, v in row.items() if k != "path"},
                "file_bytes": row["path"].stat().st_size,
                "size_ratio": dense["size_bytes"] / row["size_bytes"],
                "accuracy_drop_pts": 100 * (dense["accuracy"] - row["accuracy"]),
                "latency_ms": median,
                "latency_p90_ms": p90(ts),
                "speedup": dense_ms / median,
            }
        )
    return out


def _print(table: list[dict[str, Any]]) -> None:
    print(
        f"{'':<12} {'knobs':<44} {'acc':>6} {'drop':>5} {'size':>10} {'x':>5} "
        f"{'ms':>7} {'p90':>7} {'faster':>6}"
    )
    for r in table:
        knobs = " ".join(f"{k}={v}" for k, v in r.get("knobs", {}).items())
        print(
            f"{r['label']:<12} {knobs:<44} {r['accuracy']:>6.4f} {r['accuracy_drop_pts']:>5.2f} "
            f"{int(r['size_bytes']):>10} {r['size_ratio']:>5.2f} {r['latency_ms']:>7.3f} "
            f"{r['latency_p90_ms']:>7.3f} {r['speedup']:>6.2f}"
        )


def _smoke() -> int:
    import warnings

    import torch
    from torch import nn

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for hidden in (256, 128):
            model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10)).eval()
            path = Path(tmp) / f"mlp{hidden}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter
                torch.onnx.export(model, (torch.zeros(1, 64),), str(path), dynamo=False)
            paths.append(path)
        rows = [
            {"label": f"mlp {h}", "path": p, "accuracy": 1.0, "size_bytes": p.stat().st_size}
            for h, p in zip((256, 128), paths, strict=True)
        ]
        times = time_interleaved(paths, repeats=20, warmup=5)
        table = _table(rows[0], rows[1:], times)
        prof = _profile(rows[0])
    _print(table)
    print(f"profile {rows[0]['label']} (us per run by op type): {prof}")
    ok = all(len(ts) == 20 for ts in times) and table[1]["size_ratio"] > 1.5 and "Gemm" in prof
    print("smoke:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
