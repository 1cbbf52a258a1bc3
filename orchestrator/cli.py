"""The ``slimtune`` command: ``search`` runs a search, ``select`` picks a deployable trial."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from orchestrator._rebuild_cmd import add_rebuild_parser, run_rebuild
from orchestrator._report_cmd import add_report_parser, run_report
from orchestrator._select_cmd import add_select_options, run_select
from orchestrator._ui_cmd import add_ui_parser, run_ui
from searchspace import ConfigError, SearchSpec, SlimtuneError, mask_secrets, shorten

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_FEASIBLE = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as shells report `cat big | head` under pipefail


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="slimtune",
        description="Find the deployable compressed versions of a PyTorch model.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="run a multi-objective compression search")
    s.add_argument("config", type=Path, help="YAML config (see examples/digits.yaml)")
    s.add_argument("--trials", type=int, help="override the config's number of trials")
    s.add_argument("--concurrency", type=int, help="override the config's concurrency")
    s.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    s.add_argument(
        "--resume",
        action="store_true",
        help="continue the experiment's last unfinished search (after a crash or a kill)",
    )
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
    add_select_options(c)
    add_report_parser(sub)
    add_rebuild_parser(sub)
    v = sub.add_parser(
        "validate",
        help="check a config and its task (one tiny batch end to end, then every bits x "
        "pruning scheme of the space exported and export-checked), train nothing",
    )
    v.add_argument("config", type=Path, help="YAML config")

    add_ui_parser(sub)

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


def _quiet_torch() -> None:
    # torch sets its loggers' levels when imported: call after the first import of trials.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        return _stdout_closed()


def _stdout_closed() -> int:
    """The reader of our output went away (``slimtune schema | head``): exit quietly, as a Unix
    tool killed by SIGPIPE does. Standard output is pointed at /dev/null first, or Python's
    own flush at exit raises the same error again and prints it."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    _quiet_libraries()
    try:
        if args.command == "search":
            return _search(args)
        if args.command == "schema":
            return _schema()
        if args.command == "report":
            return run_report(args)
        if args.command == "rebuild":
            return run_rebuild(args)
        if args.command == "validate":
            return _validate(args)
        if args.command == "ui":
            return run_ui(args)
        return _select(args)
    except ConfigError as exc:
        print(f"slimtune: config error: {mask_secrets(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except SlimtuneError as exc:
        kind = type(exc).__name__
        code = {
            "NoFeasibleTrial": EXIT_NO_FEASIBLE,
            "SearchStopped": EXIT_FAILED,
            "RecordsLost": EXIT_FAILED,
            "SearchInterrupted": EXIT_INTERRUPTED,
        }.get(kind, EXIT_USAGE)
        print(f"slimtune: {shorten(mask_secrets(str(exc)), 4000)}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("slimtune: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _search(args: argparse.Namespace) -> int:
    from searchspace import load_spec

    spec = load_spec(args.config)  # fails here, before anything is started or written
    spec = _with_counts(spec, trials=args.trials, concurrency=args.concurrency)
    from orchestrator._store import check_storage, check_uri

    check_uri(args.address, field="--address")
    check_storage(spec.storage, args.workdir)  # before the task is loaded or MLflow is written
    from orchestrator._ray_session import SearchOptions, start_search, starts_beside_ray

    opts = SearchOptions(
        config_path=args.config.resolve(),
        workdir=args.workdir,
        address=args.address,
        resume=args.resume,
    )
    if opts.resume or not starts_beside_ray():
        # Everything imported first, then Ray started beside the task's dry run (run_search);
        # a --resume checks its saved state before Ray starts.
        from orchestrator._search import run_search

        return EXIT_OK if run_search(spec, opts).finished > 0 else EXIT_FAILED
    # Ray starts while a thread imports torch and the trial code, loads the task and runs its
    # dry run (seconds each): the command pays the longer, not the sum. The rest of the search
    # (MLflow, Ray Tune, pandas) is imported once that thread is done: the dry run's export
    # imports some of the same modules (pandas, scipy) lazily, and two threads importing one
    # module's circular imports at once can see it half-made. Nothing is written to MLflow
    # before run_search.
    with start_search(spec, opts) as started:
        started.checked()  # a task that fails stops here, Ray shut down
        from orchestrator._search import run_search

        outcome = run_search(spec, opts, started=started)
    return EXIT_OK if outcome.finished > 0 else EXIT_FAILED


def _with_counts(spec: SearchSpec, **counts: int | None) -> SearchSpec:
    """Apply command-line overrides of whole-number fields (``--trials``, ``--concurrency``)."""
    for name, value in counts.items():
        if value is None:
            continue
        if value < 1:
            raise ConfigError(
                field=f"--{name}",
                value=value,
                rule="must be >= 1",
                fix=f"pass a whole number >= 1 to --{name}",
            )
        spec = spec.model_copy(update={name: value})
    return spec


def _validate(args: argparse.Namespace) -> int:
    from searchspace import load_spec

    spec = load_spec(args.config)
    print(
        f"config {args.config}: valid ({spec.trials} trials, sampler {spec.sampler.name}, "
        f"objectives {', '.join(f'{o.metric} ({o.direction})' for o in spec.objectives)})"
    )
    from trials import check_task, load_task

    _quiet_torch()
    task = load_task(spec.task)
    report = check_task(task)
    steps = ", ".join(f"{name} {secs:.2f} s" for name, secs in report.steps)
    print(
        f"task {spec.task!r}: valid ({report.parameters:,} parameters, input "
        f"{report.input_shape}, {report.num_classes} classes); {steps}"
    )
    from orchestrator._schemes import check_space_schemes

    check_space_schemes(spec, task, out=sys.stdout)  # every bits x pruning pair, or exit 2
    return EXIT_OK


def _schema() -> int:
    import json

    from searchspace import SearchSpec

    print(json.dumps(SearchSpec.model_json_schema(), indent=2))
    return EXIT_OK


def _select(args: argparse.Namespace) -> int:
    return run_select(args)


def entry() -> None:
    """The ``slimtune`` command (and ``python -m orchestrator.cli``): :func:`main`, then exit.

    Before the interpreter's shutdown, every live object is moved out of the garbage
    collector's reach (``gc.freeze``): its last full collection, over everything torch, Ray,
    MLflow and pandas made, otherwise takes seconds after the command's work is done (2.8 s
    after a search on the 2-core machine, 0.4 s with the freeze: BENCHMARKS.md, "Search fixed
    cost"). Objects are still released by their reference counts and exit handlers (``atexit``,
    ``weakref.finalize``, logging) still run; only garbage in reference cycles is left to the
    operating system, which Python never promises to finalize at exit anyway. Not in
    :func:`main`: tests call it in their own process, which must keep collecting."""
    code = main()
    gc.freeze()
    raise SystemExit(code)


if __name__ == "__main__":
    entry()
