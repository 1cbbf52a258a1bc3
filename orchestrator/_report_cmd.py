"""``slimtune report EXPERIMENT --out DIR``: a static HTML report that opens without a server."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_report_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    r = sub.add_parser("report", help="write a static HTML report of a search")
    r.add_argument("experiment", help="the search's experiment name")
    r.add_argument("--out", type=Path, required=True, help="folder for index.html and plots")
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default: ./mlflow.db)")
    r.add_argument("--run-id", help="the search's parent run id (default: the latest search)")


def run_report(args: argparse.Namespace) -> int:
    from orchestrator._store import existing_store, store_errors, writable_dir
    from reports import build_report

    uri = existing_store(args.tracking_uri, Path.cwd())  # never creates an empty store
    out = writable_dir(args.out)
    start = time.perf_counter()
    with store_errors(uri):
        index = build_report(uri, args.experiment, out, parent_run_id=args.run_id)
    print(
        f"report written to {index} in {time.perf_counter() - start:.1f} s "
        f"(interactive view: {index.parent / 'trials.html'}); it opens without a server"
    )
    return 0
