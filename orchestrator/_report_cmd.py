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
    from orchestrator._tracking import resolve_tracking_uri
    from reports import build_report

    uri = resolve_tracking_uri(args.tracking_uri, Path.cwd())
    start = time.perf_counter()
    index = build_report(uri, args.experiment, args.out, parent_run_id=args.run_id)
    print(
        f"report written to {index} in {time.perf_counter() - start:.1f} s "
        f"(interactive view: {index.parent / 'trials.html'}); it opens without a server"
    )
    return 0
