"""Record the fingerprints of ``uniform_plan_cases`` on this CPU, made by the code before
per-layer plans (``data/uniform_plan_sha256.json``; a trial's bytes depend on the CPU's float
kernels, so each kind of CPU has its own entry).

From the repository root, with the pre-plan code checked out beside it::

    git worktree add /tmp/preplan dd7f089
    PYTHONPATH=/tmp/preplan .venv/bin/python tests/trials/record_uniform_plan.py

It runs the cases with the ``trials`` package on ``PYTHONPATH`` (the pre-plan one) and adds or
replaces this CPU's entry.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import uniform_plan_cases as cases  # noqa: E402
from trials_tiny_task import TinyDigits  # noqa: E402

from trials import file_sha256, library_versions, run_trial  # noqa: E402

THREADS = 1


def main() -> None:
    import trials

    torch.set_num_threads(THREADS)
    task = TinyDigits()
    sha: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, params in cases.CASES.items():
            result = run_trial(task, params, cases.settings(Path(tmp) / "c", Path(tmp) / name))
            sha[name] = file_sha256(result.onnx_path)
    path = HERE / "data" / "uniform_plan_sha256.json"
    data = json.loads(path.read_text())
    if data["versions"] != library_versions() or data["torch_threads"] != THREADS:
        raise SystemExit(
            f"the file holds fingerprints of {data['versions']} at {data['torch_threads']} "
            f"threads, this process has {library_versions()} at {THREADS}: record all CPUs "
            "again with one set of libraries"
        )
    data["sha256"][cases.cpu_key()] = sha
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"{cases.cpu_key()}: {sha} (code of {Path(trials.__file__).parent})")


if __name__ == "__main__":
    main()
