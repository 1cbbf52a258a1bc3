"""Which trials of a finished search beat the dense baseline by given factors.

    python benchmarks/compression_front.py EXPERIMENT [--tracking-uri URI]
        [--min-size-ratio 4] [--min-speedup 1.5] [--max-accuracy-drop 1.0]

Reads the search back from MLflow (reports.load_search) and prints, for every finished trial,
its file-size ratio and batch-1 latency speed-up over the dense fp32 baseline measured in the
same search, and whether it meets all three targets. Exit code 0 when at least one trial does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reports import load_search


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("experiment")
    p.add_argument("--tracking-uri", default=f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    p.add_argument("--min-size-ratio", type=float, default=4.0)
    p.add_argument("--min-speedup", type=float, default=1.5)
    p.add_argument("--max-accuracy-drop", type=float, default=1.0, help="percentage points")
    p.add_argument("--json", type=Path, help="also write the table here")
    a = p.parse_args()
    runs = load_search(a.tracking_uri, a.experiment)
    base = runs.baseline
    df = runs.trials[runs.trials["status"] == "FINISHED"].copy()
    df["size_ratio"] = base["size_bytes"] / df["size_bytes"]
    df["speedup"] = base["latency_ms"] / df["latency_ms"]
    df["accuracy_drop_pts"] = 100 * (base["accuracy"] - df["accuracy"])
    df["meets"] = (
        (df["size_ratio"] >= a.min_size_ratio)
        & (df["speedup"] >= a.min_speedup)
        & (df["accuracy_drop_pts"] <= a.max_accuracy_drop)
    )
    cols = [
        "trial_number",
        "pruning",
        "sparsity",
        "bits",
        "accuracy",
        "accuracy_drop_pts",
        "size_bytes",
        "size_ratio",
        "latency_ms",
        "speedup",
        "meets",
    ]
    cols = [c for c in cols if c in df]
    df = df.sort_values(["meets", "size_ratio"], ascending=[False, False])
    print(
        f"baseline: accuracy {base['accuracy']:.4f}, {base['size_bytes'] / 1e6:.2f} MB, "
        f"{base['latency_ms']:.3f} ms; {len(df)} finished trials, {int(df['meets'].sum())} "
        f"meet size >= {a.min_size_ratio}x, speed-up >= {a.min_speedup}x, drop <= "
        f"{a.max_accuracy_drop} pts"
    )
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if a.json:
        a.json.write_text(
            json.dumps(
                {"baseline": base, "trials": df[cols].to_dict("records")}, indent=1, default=str
            )
        )
    return 0 if bool(df["meets"].any()) else 1


if __name__ == "__main__":
    sys.exit(main())
