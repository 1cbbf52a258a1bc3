"""The task plugin example (examples/plugin_task/my_task.py), loaded the way a search loads it:
by ``module:attr`` in a fresh process whose PYTHONPATH names the module's directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from searchspace import load_spec

REPO = Path(__file__).resolve().parents[2]
PLUGIN_DIR = REPO / "examples" / "plugin_task"

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from trials import Task, ensure_baseline, load_task

    task = load_task("my_task:WineTask")
    x, y = task.train_data()
    baseline = ensure_baseline(task, seed=0, cache_dir=Path(sys.argv[1]))
    print(json.dumps({"is_task": isinstance(task, Task), "name": task.name,
                      "train": list(x.shape), "accuracy": baseline.accuracy}))
    """
)


def _run(tmp_path: Path, pythonpath: list[Path]) -> subprocess.CompletedProcess[str]:
    paths = [str(p) for p in pythonpath]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )


def test_plugin_task_loads_from_pythonpath_in_a_fresh_process(tmp_path: Path) -> None:
    proc = _run(tmp_path, [REPO, PLUGIN_DIR])
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["is_task"] and out["name"] == "wine-mlp"
    assert out["train"] == [142, 13]
    assert out["accuracy"] >= 0.9


def test_without_pythonpath_the_error_says_how_to_fix_it(tmp_path: Path) -> None:
    proc = _run(tmp_path, [REPO])
    assert proc.returncode != 0
    assert "module not found" in proc.stderr and "PYTHONPATH" in proc.stderr


def test_plugin_config_names_the_module() -> None:
    spec = load_spec(REPO / "examples" / "plugin.yaml")
    assert spec.task == "my_task:WineTask"
    assert (PLUGIN_DIR / "my_task.py").is_file()
