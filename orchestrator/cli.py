"""The ``slimtune`` command: ``search`` runs a search, ``select`` picks a deployable trial."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from searchspace import ConfigError, SlimtuneError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_FEASIBLE = 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="slimtune",
        description="Find the deployable compressed versions of a PyTorch model.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="run a multi-objective compression search")
    s.add_argument("config", type=Path, help="YAML config (see examples/digits.yaml)")
    s.add_argument("--trials", type=int, help="override the config's number of trials")
    s.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    s.add_argument(
        "--workdir",
        type=Path,
        default=Path.cwd(),
        help="where mlflow.db, mlruns/ and .slimtune/ go (default: the current dir)",
    )

    c = sub.add_parser("select", help="pick the best trial that meets constraints")
    c.add_argument("experiment", help="the search's experiment name")
    c.add_argument("--min-accuracy", type=float, help="fraction, e.g. 0.97")
    c.add_argument("--max-size-kb", type=float, help="ONNX file size limit in KB (1 KB = 1000 B)")
    c.add_argument("--max-latency-ms", type=float, help="batch-1 median latency limit in ms")
    c.add_argument("--out", type=Path, help="copy the chosen ONNX file here")
    c.add_argument("--tracking-uri", help="MLflow tracking URI (default: ./mlflow.db)")
    c.add_argument("--run-id", help="the search's parent run id (default: the latest search)")
    sub.add_parser("schema", help="print the config's JSON Schema (for editors)")
    return p


def _quiet_libraries() -> None:
    """The CLI owns this process: keep library chatter off the user's console."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in ("mlflow", "torch.onnx", "alembic", "ray.tune"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_libraries()
    try:
        if args.command == "search":
            return _search(args)
        if args.command == "schema":
            return _schema()
        return _select(args)
    except ConfigError as exc:
        print(f"slimtune: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SlimtuneError as exc:
        code = EXIT_NO_FEASIBLE if type(exc).__name__ == "NoFeasibleTrial" else EXIT_USAGE
        print(f"slimtune: {exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("slimtune: interrupted", file=sys.stderr)
        return 130


def _search(args: argparse.Namespace) -> int:
    from searchspace import load_spec

    spec = load_spec(args.config)  # fails here, before anything is started or written
    if args.trials is not None:
        if args.trials < 1:
            raise ConfigError(
                field="--trials",
                value=args.trials,
                rule="must be >= 1",
                fix="pass a whole number of trials >= 1",
            )
        spec = spec.model_copy(update={"trials": args.trials})

    from trials import load_task

    load_task(spec.task)  # an unimportable task is a usage error, reported before Ray starts

    from orchestrator._search import SearchOptions, run_search

    outcome = run_search(
        spec,
        SearchOptions(
            config_path=args.config.resolve(), workdir=args.workdir, address=args.address
        ),
    )
    return EXIT_OK if outcome.finished > 0 else EXIT_FAILED


def _schema() -> int:
    import json

    from searchspace import SearchSpec

    print(json.dumps(SearchSpec.model_json_schema(), indent=2))
    return EXIT_OK


def _select(args: argparse.Namespace) -> int:
    from orchestrator._tracking import resolve_tracking_uri
    from reports import Constraints, download_model, load_search, select

    constraints = Constraints(
        min_accuracy=args.min_accuracy,
        max_size_kb=args.max_size_kb,
        max_latency_ms=args.max_latency_ms,
    )
    uri = resolve_tracking_uri(args.tracking_uri, Path.cwd())
    runs = load_search(uri, args.experiment, parent_run_id=args.run_id)
    choice = select(runs.trials, constraints)
    best = choice.chosen
    print(
        f"chosen: trial {int(best['trial_number'])} (run {best['run_id']}) of "
        f"{choice.feasible} trials meeting the constraints\n"
        f"  lr={best['lr']:.2e} batch_size={int(best['batch_size'])} "
        f"sparsity={best['sparsity']:.2f} bits={int(best['bits'])} "
        f"artifact={best.get('artifact', '?')}\n"
        f"  accuracy={best['accuracy']:.4f} size={best['size_bytes'] / 1000:.1f} KB "
        f"gzip={best['size_gzip_bytes'] / 1000:.1f} KB latency={best['latency_ms']:.3f} ms "
        f"(p90 {best['latency_p90_ms']:.3f} ms)"
    )
    for _, r in choice.runners_up.iterrows():
        print(
            f"  runner-up: trial {int(r['trial_number'])} accuracy={r['accuracy']:.4f} "
            f"size={r['size_bytes'] / 1000:.1f} KB latency={r['latency_ms']:.3f} ms"
        )
    if args.out is not None:
        path = download_model(uri, str(best["run_id"]), args.out)
        print(f"ONNX file written to {path}")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
