"""The search's start (orchestrator._ray_session.start_search): Ray starts while a thread
imports the trial code, loads the task and runs its dry run, where the machine has the cores
(``starts_beside_ray``); on fewer, the task is loaded first and only the dry run runs beside
Ray's start. Either way a task that cannot run stops the search with its reason, exit 2,
nothing written to MLflow. The 2-core CI machine takes the second path by itself: the first is
forced by lowering ``BESIDE_RAY_MIN_CORES`` in the command's own process (``cli(...,
beside_ray=True)``; the suite's shared search runs that way)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

import orchestrator._ray_session as session
from orchestrator._ray_session import SearchOptions, start_search
from searchspace import SlimtuneError, parse_spec
from tests.orchestrator.conftest import (
    BROKEN_FORWARD_TASK,
    E2E_TRIALS,
    QUIET_ENV,
    E2ESearch,
    cli,
    python_json,
    small_config,
)

ROOT = Path(__file__).resolve().parents[2]
TINY = Path(__file__).resolve().parents[1] / "trials"


def _modules_after(prefix: str, code: str) -> set[str]:
    """The modules a fresh interpreter imports running ``code`` after ``prefix``."""
    script = (
        f"import sys, json\n{prefix}\nbefore = set(sys.modules)\n{code}\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    return set(python_json(script, **QUIET_ENV))


def test_the_trial_code_and_ray_init_share_no_module_while_side_by_side() -> None:
    # What the command has imported when the two start (its config types, Ray, the shared few).
    prefix = "import argparse, searchspace, ray\n" + "".join(
        f"import {name}\n" for name in session._SHARED_WITH_RAY_INIT
    )
    ray_dir = tempfile.mkdtemp(prefix="slimtune-ray-")  # short: Ray's socket paths are limited
    ray_init = (
        "ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, "
        f"_temp_dir={ray_dir!r}); ray.shutdown()"
    )
    try:
        by_ray = _modules_after(prefix, ray_init)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    by_trials = _modules_after(prefix, "import trials")
    dry_run = (
        "from orchestrator._schemes import preflight\nfrom trials import load_task\n"
        "spec = searchspace.parse_spec('experiment: x\\ntask: digits\\n')\n"
        "print(preflight(spec, load_task('digits'), __import__('pathlib').Path("
        "__import__('tempfile').mkdtemp())), file=sys.stderr)"
    )
    by_dry_run = _modules_after(prefix + "import trials\n", dry_run)
    assert by_ray and "torch" in by_trials and by_dry_run  # each measured something
    assert not by_ray & by_trials, sorted(by_ray & by_trials)
    # Cython's shared helper modules are extension modules made on load: no import cycle.
    both = {m for m in by_ray & by_dry_run if not m.startswith("_cython_")}
    assert not both, sorted(both)


def test_on_a_small_machine_a_task_that_fails_to_load_stops_before_ray_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def no_ray(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ray was started for a task that does not load")

    monkeypatch.setattr(session, "BESIDE_RAY_MIN_CORES", 10_000)
    monkeypatch.setattr(session, "search_ray", no_ray)
    spec = parse_spec("experiment: x\ntask: no_such_module_anywhere:Task\n")
    opts = SearchOptions(config_path=tmp_path / "c.yaml", workdir=tmp_path)
    with pytest.raises(SlimtuneError, match="no_such_module_anywhere"), start_search(spec, opts):
        pass


_CORES_BESIDE = """
import json, os, tempfile, threading
from pathlib import Path
import orchestrator._ray_session as s
from orchestrator._isolation import _mask, _threads
from orchestrator._ray_session import SearchOptions, start_search
from searchspace import parse_spec
s.BESIDE_RAY_MIN_CORES = 1
spec = parse_spec("experiment: x\\ntask: digits\\nlatency: {isolation: cores}\\n")
work = Path(tempfile.mkdtemp())
def masks():  # the product's reader: a thread (Ray's) that ended meanwhile gives None
    return {str(t): sorted(m) for t in _threads() if (m := _mask(t)) is not None}
with start_search(spec, SearchOptions(config_path=work / "c.yaml", workdir=work)) as started:
    task, lines = started.checked()
    names = {str(t.native_id): t.name for t in threading.enumerate()}
    inside = masks()
    cores = list(started.ray.node.cores)
after = masks()
dry = [t for t, n in names.items() if n.startswith("slimtune-dry-run")]
print(json.dumps([cores, task.name, "passed its dry run" in lines, dry, inside, after]))
"""


def test_loaded_beside_ray_under_cores_the_thread_keeps_off_the_meter_core_too() -> None:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("pinning needs two usable cores")
    meter, task, dry_ran, dry, inside, after = python_json(_CORES_BESIDE, **QUIET_ENV)
    assert meter == cores[-1:] and task == "digits" and dry_ran
    assert dry and all(t in inside for t in dry)  # the thread that loaded the task, alive
    assert all(meter[0] not in mask for mask in inside.values())  # every thread, that one too
    assert all(mask == cores for t, mask in after.items() if t in inside)  # masks given back


_TEMP_DIR = """
import json, tempfile
from pathlib import Path
from orchestrator._ray_session import SearchOptions, search_ray
from searchspace import parse_spec
spec = parse_spec("experiment: x\\ntask: digits\\n")
work = Path(tempfile.mkdtemp())
opts = SearchOptions(config_path=work / "c.yaml", workdir=work)
with search_ray(spec, opts) as up:
    ended = up.temp_dir
    held = any(ended.glob("session_*/logs"))
try:
    with search_ray(spec, opts) as up:
        failed = up.temp_dir
        raise RuntimeError("the search failed")
except RuntimeError:
    pass
kept = any(failed.glob("session_*/logs"))
print(json.dumps([str(ended), held, ended.exists(), str(failed), kept]))
"""


def test_a_search_removes_the_temporary_directory_of_its_ray_unless_it_failed() -> None:
    """Each search started its own Ray in a new ``slimtune-ray-*`` directory under /tmp and left
    it there (sockets and logs, about 1 MB a search); now a search that ends removes it, and
    one that fails keeps it, with Ray's logs of the workers to look into."""
    ended, held, still_there, failed, logs_kept = python_json(_TEMP_DIR, **QUIET_ENV)
    try:
        assert Path(ended).name.startswith("slimtune-ray-") and held, ended
        assert not still_there, f"{ended} is still there after the search ended"
        assert Path(failed).name.startswith("slimtune-ray-") and logs_kept, failed
    finally:
        shutil.rmtree(failed, ignore_errors=True)


@pytest.mark.e2e
def test_the_shared_search_loaded_its_task_beside_ray_start_and_ran(e2e_search: E2ESearch) -> None:
    _, done = e2e_search  # conftest.py: the suite's one search started that way
    out = done.stdout
    assert out.index("passed its dry run") < out.index("search run ") < out.index("trials finished")
    assert f"{E2E_TRIALS} trials finished, 0 failed" in out
    assert "torchvision is not installed" not in done.stderr  # the exporter's notices quiet


@pytest.mark.e2e
@pytest.mark.parametrize("broken", ["forward", "import"])
def test_a_task_that_fails_beside_ray_start_stops_the_search_and_writes_nothing(
    tmp_path: Path, broken: str
) -> None:
    body = BROKEN_FORWARD_TASK if broken == "forward" else "import no_such_module_anywhere\n"
    (tmp_path / "broken_task.py").write_text(body)
    config = small_config("broken", trials=2, task="broken_task:BrokenForward")
    (tmp_path / "c.yaml").write_text(config)
    path = os.pathsep.join(str(p) for p in (tmp_path, TINY, ROOT))
    done = cli("search", "c.yaml", cwd=tmp_path, env={"PYTHONPATH": path}, beside_ray=True)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    reason = "boom in forward" if broken == "forward" else "no_such_module_anywhere"
    assert reason in done.stderr and "Traceback" not in done.stderr
    assert "passed its dry run" not in done.stdout
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize(
    ("address", "env", "expected"),
    [
        (None, None, None),
        ("", None, None),  # an empty --address starts Ray here, as no --address does
        (None, "ray://head:10001", "ray://head:10001"),  # inside `ray job submit`
        ("", "10.0.0.1:6379", "10.0.0.1:6379"),
        ("10.0.0.2:6379", "10.0.0.1:6379", "10.0.0.2:6379"),  # the option wins
    ],
)
def test_the_cluster_to_join_is_decided_in_one_place(
    monkeypatch: pytest.MonkeyPatch, address: str | None, env: str | None, expected: str | None
) -> None:
    """Ray's start and the store's write-ahead log (every writer on this machine) both read
    ``ray_address``: a search that starts its own Ray is one whose writers are all local."""
    if env is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", env)
    opts = SearchOptions(config_path=Path("c.yaml"), workdir=Path("."), address=address)
    assert session.ray_address(opts) == expected
