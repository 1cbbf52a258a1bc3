"""``slimtune rebuild RUN_ID --out DIR``: run a finished trial again from its record and compare.

The record (``trial/record.json`` on the trial's MLflow run, see ``trials.TrialRecord``) holds
the search's config, the trial's knobs, seeds, torch thread count and fingerprints. The trial is
run again in this process with ``trials.run_trial``; the rebuilt ONNX file lands in ``DIR`` and
is compared with what the search logged: the weights and the file bit for bit, accuracy exactly,
the file sizes within ``SIZE_TOLERANCE``, latency for information only (it is a property of the
machine and the moment, not of the model).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from searchspace import SlimtuneError

if TYPE_CHECKING:  # imported on use: `slimtune --help` must not pay for torch and mlflow
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from trials import TrialRecord, TrialResult, VersionDrift

# Relative difference allowed between the logged and the rebuilt file sizes (the exporter could
# in principle name nodes differently between runs; in practice the files are identical).
SIZE_TOLERANCE = 0.005
EXIT_REPRODUCED = 0
EXIT_DIFFERS = 1


class RebuildError(SlimtuneError):
    """A run cannot be rebuilt (not a finished trial, no record, not found)."""


@dataclass(frozen=True)
class Check:
    """One comparison between the search's record and the rebuild. ``required`` checks decide
    whether the trial was reproduced; the others explain or inform."""

    name: str
    logged: str
    rebuilt: str
    verdict: str
    ok: bool
    required: bool


def add_rebuild_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    r = sub.add_parser(
        "rebuild", help="re-run a finished trial from its logged record and compare the results"
    )
    r.add_argument("run_id", help="the trial's MLflow run id (a child run of a search)")
    r.add_argument(
        "--out", type=Path, required=True, help="folder for model.onnx, record.json, rebuild.json"
    )
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default: ./mlflow.db)")
    r.add_argument(
        "--cache-dir",
        type=Path,
        help="dense baseline cache (default: ./.slimtune/cache, the search's default, when it "
        "exists here; else OUT/cache, where the baseline is trained again). The record's own "
        "cache path is never used: an edited record must not choose where slimtune writes",
    )
    r.add_argument(
        "--device",
        help="train on this device (cpu, cuda, cuda:N) instead of the recorded one; the result "
        "then need not match bit for bit",
    )


def run_rebuild(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Rebuild the trial ``args.run_id`` into ``args.out``; 0 when reproduced, 1 when not."""
    from mlflow.tracking import MlflowClient

    from orchestrator._store import existing_store, store_errors, writable_dir
    from orchestrator._tracking import redact_uri

    out = out or sys.stdout
    uri = existing_store(args.tracking_uri, Path.cwd())
    dest = writable_dir(args.out)
    cache_dir = _cache_dir(args.cache_dir, dest)
    client = MlflowClient(tracking_uri=uri)
    with store_errors(uri):
        run = _trial_run(client, args.run_id, redact_uri(uri))
        record = _read_record(client, run)
    _warn_drift(record.version_drift(), args.run_id)
    _warn_cpu(record, args.run_id)
    device = _device(args.device, record, args.run_id)
    print(
        f"rebuilding trial {record.number} (run {args.run_id}) of task {record.spec.task!r}: "
        f"{_knobs(record)}; seed {record.settings['seed']}, {record.torch_threads} torch "
        f"thread(s), baseline cache {cache_dir}",
        file=out,
        flush=True,
    )
    result = _rebuild(record, work_dir=dest, cache_dir=cache_dir, device=device)
    checks = compare(record, run.data.metrics, result)
    (dest / "record.json").write_text(record.to_json())
    (dest / "rebuild.json").write_text(
        json.dumps({"run_id": args.run_id, "checks": [asdict(c) for c in checks]}, indent=1)
    )
    print(format_checks(checks), file=out)
    return _verdict(checks, result.onnx_path, out)


def _trial_run(client: MlflowClient, run_id: str, where: str) -> Run:
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        raise RebuildError(
            f"run {run_id!r} is not in the MLflow store at {where} ({type(exc).__name__}). "
            "Fix: pass a trial's run id (from the MLflow UI, or the run_id column of "
            "reports.load_search(...).trials) and the store it is in with --tracking-uri."
        ) from None
    role = run.data.tags.get("slimtune.role")
    if role != "trial":
        raise RebuildError(
            f"run {run_id} is not a slimtune trial (tag slimtune.role={role!r}). Fix: pass the "
            "run id of one of the search's child runs (one per trial)."
        )
    if run.info.status != "FINISHED":
        raise RebuildError(
            f"run {run_id} ended {run.info.status}: only finished trials have a record to rebuild "
            "from. Fix: pick a FINISHED trial of the search."
        )
    return run


def _read_record(client: MlflowClient, run: Run) -> TrialRecord:
    from orchestrator._tracking import RECORD_ARTIFACT
    from trials import TrialRecord

    run_id = run.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, RECORD_ARTIFACT, tmp)
            text = Path(path).read_text(encoding="utf-8")
        except Exception as exc:
            raise RebuildError(
                f"run {run_id} has no {RECORD_ARTIFACT} ({type(exc).__name__}): it was logged "
                "by a slimtune that did not write trial records yet. Fix: run the search again "
                "with this slimtune; its trials can be rebuilt."
            ) from None
    return TrialRecord.from_json(text, source=f"run {run_id}")


def _warn_drift(drift: list[VersionDrift], run_id: str) -> None:
    if not drift:
        return
    lines = ", ".join(f"{d.name} {d.recorded} (here {d.here})" for d in drift)
    pins = " ".join(f"'{d.pin()}'" for d in drift if d.name != "python")
    python = next((d.recorded for d in drift if d.name == "python"), None)
    fix = f"pip install {pins}" if pins else ""
    if python is not None:
        fix += (" and " if fix else "") + f"use Python {python}"
    print(
        f"slimtune: warning: run {run_id} was recorded with {lines}; the rebuild may differ "
        f"bit for bit. Fix: {fix}.",
        file=sys.stderr,
        flush=True,
    )


def _warn_cpu(record: TrialRecord, run_id: str) -> None:
    """Say so when the trial ran on another kind of CPU: torch and ONNX Runtime choose their
    kernels by instruction set, so the weights' last bits and an int8 file's outputs can differ
    (records written before the CPU was recorded say nothing)."""
    from trials import cpu_kind

    here = cpu_kind()
    if record.cpu is None or record.cpu.key == here.key:
        return
    print(
        f"slimtune: warning: run {run_id} ran on {record.cpu}; this machine is {here}. Torch "
        "and ONNX Runtime pick their kernels by instruction set, so the rebuild may differ bit "
        "for bit (and in accuracy by a few rows). Fix: rebuild on a machine of the recorded "
        "kind to check the trial exactly.",
        file=sys.stderr,
        flush=True,
    )


def _cache_dir(given: Path | None, dest: Path) -> Path:
    """``--cache-dir``, else the search's default cache here, else ``dest/cache``. Never the
    record's ``baseline.cache_dir``: a record is data from elsewhere and must not choose where
    slimtune writes."""
    from orchestrator._store import writable_dir

    if given is not None:
        return writable_dir(given, field="--cache-dir")
    default = Path.cwd() / ".slimtune" / "cache"
    return default.resolve() if default.is_dir() else dest / "cache"


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _device(given: str | None, record: TrialRecord, run_id: str) -> str | None:
    """The device override for the rebuild, if any; refuses a recorded CUDA device that this
    machine lacks unless another device is given."""
    import torch

    if given is not None and given != record.device:
        print(
            f"slimtune: warning: trial {record.number} trained on {record.device}; rebuilding "
            f"on {given}, so weights and accuracy need not match bit for bit.",
            file=sys.stderr,
        )
        return given
    if record.device.startswith("cuda") and not torch.cuda.is_available():
        raise RebuildError(
            f"run {run_id} trained on {record.device}, but this machine has no CUDA device "
            f"(torch {torch.__version__}). Fix: rebuild on a machine with a GPU, or pass "
            "--device cpu (the result then need not match bit for bit)."
        )
    return None


def _rebuild(
    record: TrialRecord, *, work_dir: Path, cache_dir: Path, device: str | None
) -> TrialResult:
    """Run the trial as the search did: the dense baseline first, with the thread count it was
    trained with (only if it is not in the cache), then the trial with its own."""
    import logging

    from trials import ensure_baseline, load_task, run_trial

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    task = load_task(record.spec.task)
    settings = record.rebuild_settings(work_dir=work_dir, cache_dir=cache_dir, device=device)
    with _torch_threads(max(1, record.baseline_threads)):
        ensure_baseline(task, seed=settings.dense_seed, cache_dir=cache_dir, device=settings.device)
    with _torch_threads(record.torch_threads):
        return run_trial(task, record.params, settings)


def compare(record: TrialRecord, logged: Mapping[str, float], result: TrialResult) -> list[Check]:
    """The checks of a rebuild against the record and the run's logged metrics."""
    from trials import file_sha256

    lineage = record.lineage
    rebuilt = result.lineage
    checks = []
    if lineage is not None and rebuilt is not None:
        checks.append(_same("baseline sha256", lineage.baseline_sha256, rebuilt.baseline_sha256))
        checks.append(_same("weights sha256", lineage.weights_sha256, rebuilt.weights_sha256))
        checks.append(_same("pruning", lineage.pruning, rebuilt.pruning))
        if lineage.plan is not None or rebuilt.plan is not None:
            checks.append(_same("plan", lineage.plan, rebuilt.plan))
    checks.append(_same("onnx sha256", record.onnx_sha256, file_sha256(result.onnx_path)))
    for name in ("accuracy", "torch_accuracy"):
        if name in logged:
            ok = result.metrics[name] == logged[name]
            verdict = "exact" if ok else f"DIFFERS by {result.metrics[name] - logged[name]:+.6g}"
            checks.append(
                Check(name, f"{logged[name]:.6f}", f"{result.metrics[name]:.6f}", verdict, ok, True)
            )
    for name in ("size_bytes", "size_gzip_bytes"):
        if name in logged:
            checks.append(_size(name, logged[name], result.metrics[name]))
    for name in ("latency_ms", "latency_p90_ms"):
        if name in logged and logged[name] > 0:
            ratio = result.metrics[name] / logged[name]
            verdict = f"informational ({ratio - 1:+.0%})"
            checks.append(
                Check(
                    name, f"{logged[name]:.4f}", f"{result.metrics[name]:.4f}", verdict, True, False
                )
            )
    return checks


def _same(name: str, logged: Any, rebuilt: Any) -> Check:
    ok = logged == rebuilt
    shown = [_short(v) for v in (logged, rebuilt)]
    return Check(name, shown[0], shown[1], "identical" if ok else "DIFFERS", ok, False)


def _size(name: str, logged: float, rebuilt: float) -> Check:
    rel = abs(rebuilt - logged) / logged if logged else float(rebuilt != logged)
    ok = rel <= SIZE_TOLERANCE
    if rebuilt == logged:
        verdict = "exact"
    else:
        verdict = f"{'within' if ok else 'DIFFERS beyond'} {SIZE_TOLERANCE:.1%} ({rel:+.3%})"
    return Check(name, f"{logged:.0f}", f"{rebuilt:.0f}", verdict, ok, True)


def _short(value: Any) -> str:
    from trials import PruningLog

    if isinstance(value, str) and len(value) == 64:
        return value[:16]
    if isinstance(value, PruningLog):
        if value.widths:
            return f"widths {','.join(map(str, value.widths))}"
        return f"{len(value.history)} mask updates" if value.history else "none"
    return str(value)


def format_checks(checks: list[Check]) -> str:
    rows = [("check", "logged", "rebuilt", "result")]
    rows += [(c.name, c.logged, c.rebuilt, c.verdict) for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(r[:3], widths, strict=True)) + "  " + r[3]
        for r in rows
    )


def _verdict(checks: list[Check], onnx_path: Path, out: TextIO) -> int:
    failed = [c.name for c in checks if c.required and not c.ok]
    identical = all(c.ok for c in checks if not c.name.startswith("latency"))
    if not failed:
        how = "bit for bit" if identical else "in accuracy and size (some fingerprints differ)"
        print(f"reproduced {how}: {onnx_path}", file=out)
        return EXIT_REPRODUCED
    differs = [c.name for c in checks if not c.ok and not c.required]
    cause = f" (the {', '.join(differs)} differ first)" if differs else ""
    print(
        f"slimtune: NOT reproduced: {', '.join(failed)} differ{cause}. Causes: other library "
        "versions or another kind of CPU (see any warning above), another dense baseline (pass "
        "--cache-dir with the search's .slimtune/cache), or a task whose data changed. Rebuilt "
        "file: "
        f"{onnx_path}",
        file=sys.stderr,
    )
    return EXIT_DIFFERS


def _knobs(record: TrialRecord) -> str:
    return ", ".join(
        f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in record.params.to_dict().items()
    )
