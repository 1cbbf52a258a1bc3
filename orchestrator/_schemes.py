"""Before a search (and in ``slimtune validate``): one tiny trial of each compression scheme the
config's space allows (``trials.check_schemes``), so a doomed space never reaches Ray.

A search caches a passing check under its cache directory (``schemes/<key>.json``), keyed by
the model's architecture (module types and parameter shapes), the pairs, the sparsity, the
config's ``keep_float`` and ``pruning.round_to``, and the library versions: a rerun of the
same search (or ``--resume``) does not export again. A refusal is never cached.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path
from typing import TextIO

from searchspace import Choice, FloatRange, SearchSpec
from trials import (
    SchemeCheck,
    Task,
    check_schemes,
    check_task,
    library_versions,
    write_text_atomic,
)

# Bump when what check_schemes checks changes, so an older cached pass is not trusted.
SCHEME_CHECK_VERSION = 1


def preflight(spec: SearchSpec, task: Task, cache_dir: Path) -> str:
    """The task's dry run, then every bits x pruning pair of the space exported and
    export-checked (``check_space_schemes``; raises ``SchemeRefused``): the lines to print."""
    check = check_task(task)
    seconds = sum(t for _, t in check.steps)
    lines = io.StringIO()
    print(f"task {check.task!r} passed its dry run in {seconds:.1f} s", file=lines)
    check_space_schemes(spec, task, out=lines, cache_dir=cache_dir)
    return lines.getvalue()


def space_schemes(spec: SearchSpec) -> tuple[tuple[int, ...], tuple[str, ...], float]:
    """The bit-widths and pruning schemes the space can draw, and its highest sparsity."""
    space = spec.space
    prunings = space.pruning.choices if isinstance(space.pruning, Choice) else [space.pruning]
    if isinstance(space.sparsity, FloatRange):
        sparsity = float(space.sparsity.high)
    elif isinstance(space.sparsity, Choice):
        sparsity = max(float(v) for v in space.sparsity.choices)
    else:
        sparsity = float(space.sparsity)
    return space.bit_widths(), tuple(str(p) for p in prunings), sparsity


def check_space_schemes(
    spec: SearchSpec, task: Task, *, out: TextIO, cache_dir: Path | None = None
) -> list[SchemeCheck]:
    """Run ``trials.check_schemes`` for ``spec``'s space and print one line; raises
    ``trials.SchemeRefused`` (exit code 2) naming each pair that cannot work. With
    ``cache_dir``, a pass recorded there for the same key is reused."""
    bits, prunings, sparsity = space_schemes(spec)
    start = time.perf_counter()
    cached = _cache_file(spec, task, bits, prunings, sparsity, cache_dir)
    if cached is not None and cached.is_file():
        try:
            checks = [SchemeCheck(**c) for c in json.loads(cached.read_text())["checks"]]
        except (OSError, ValueError, TypeError, KeyError):
            checks = []  # a damaged cache file: check again
        if checks:
            print(
                f"compression schemes: {len(checks)} passed their export check before "
                f"(cached, {cached.name})",
                file=out,
                flush=True,
            )
            return checks
    checks = check_schemes(
        task,
        bits,
        prunings,
        sparsity=sparsity,
        keep_float=tuple(spec.quantization.keep_float),
        round_to=spec.pruning.round_to,
    )
    pairs = ", ".join(c.describe() for c in checks)
    print(
        f"compression schemes: {len(checks)} exported and export-checked on the untrained "
        f"model in {time.perf_counter() - start:.1f} s ({pairs})",
        file=out,
        flush=True,
    )
    if cached is not None:
        write_text_atomic(cached, json.dumps({"checks": [c.__dict__ for c in checks]}))
    return checks


def _cache_file(
    spec: SearchSpec,
    task: Task,
    bits: tuple[int, ...],
    prunings: tuple[str, ...],
    sparsity: float,
    cache_dir: Path | None,
) -> Path | None:
    if cache_dir is None:
        return None
    model = task.build_model()
    architecture = [
        (name, type(m).__name__, [list(p.shape) for p in m.parameters(recurse=False)])
        for name, m in model.named_modules()
    ]
    key = json.dumps(
        {
            "version": SCHEME_CHECK_VERSION,
            "task": str(getattr(task, "name", type(task).__name__)),
            "architecture": architecture,
            "bits": sorted(bits),
            "prunings": sorted(prunings),
            "sparsity": sparsity,
            "keep_float": sorted(spec.quantization.keep_float),
            "round_to": spec.pruning.round_to,
            "libraries": library_versions(),
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir / "schemes" / f"{digest}.json"
