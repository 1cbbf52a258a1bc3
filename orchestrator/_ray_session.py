"""The start of a search: Ray started (or joined) while another thread runs the task's dry run
and, on a machine with the cores for it, first imports torch and the trial code and loads the
task; all of it ended before anything is written to MLflow.

Light on purpose (Ray and the config types only; torch and the trial code are imported in the
thread): ``slimtune search`` calls ``start_search`` before it imports the rest of the search,
so that the command pays the longer of Ray's start and the task's import and dry run, not their
sum. ``run_search`` calls it too when it is given no start (a library caller). The task's own
module is imported beside ``ray.init`` then, as its dry run (which may import lazily) always
was.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator._isolation import NodeCores, keep_off_meter_cores, usable_cores
from orchestrator._resources import check_resources
from searchspace import SearchSpec

if TYPE_CHECKING:
    from trials import Task


@dataclass(frozen=True)
class SearchOptions:
    """How to run a spec, from the command line: where, and with which paths."""

    config_path: Path
    workdir: Path
    address: str | None = None
    resume: bool = False


@dataclass(frozen=True)
class SearchRay:
    """Ray, up for one search. ``node``: the meter's cores where this process started Ray
    itself (``keep_off_meter_cores``); None on a cluster, where the meter resolves its
    isolation on the node it lands on. ``temp_dir``: where a Ray started here keeps its
    sockets and logs (``slimtune-ray-*`` in the system's temporary directory); None when
    joining a cluster."""

    node: NodeCores | None
    temp_dir: Path | None = None


@dataclass(frozen=True)
class SearchStart:
    """A search once Ray is up: its task being loaded and dry-run in a thread (the dry run and
    the space's scheme check: ``orchestrator._schemes.preflight``), which ``checked`` waits
    for. Read it before anything is written to MLflow."""

    ray: SearchRay
    loading: Future[Task]
    checking: Future[str]
    began: float  # time.perf_counter() when the start began: the search's wall time counts it

    def checked(self) -> tuple[Task, str]:
        """The task and the lines its dry run and scheme check printed, once they ended;
        raises what they raised (a task that does not load, a refused pair)."""
        return self.loading.result(), self.checking.result()


@contextlib.contextmanager
def start_search(spec: SearchSpec, opts: SearchOptions) -> Iterator[SearchStart]:
    """Start Ray for the block (``search_ray``) while a thread imports the trial code, loads
    ``spec.task`` and runs its dry run and the space's scheme check, which go on in the block
    (``SearchStart.checked``: the latency meter starts beside them). Nothing of the saved
    state of a ``--resume`` is read here: check it before (``run_search`` does)."""
    began = time.perf_counter()
    local_env()
    cache_dir = opts.workdir.resolve() / ".slimtune" / "cache"
    for name in ("ray", *_SHARED_WITH_RAY_INIT):
        importlib.import_module(name)
    with ThreadPoolExecutor(1, thread_name_prefix="slimtune-dry-run") as pool:
        loading = pool.submit(_load_task, spec)
        checking = pool.submit(_preflight, spec, loading, cache_dir)  # after it, same thread
        if not starts_beside_ray():
            loading.result()  # only the dry run beside Ray's start; a bad task stops it here
        with contextlib.ExitStack() as stack:
            try:
                ray_up = stack.enter_context(search_ray(spec, opts))
            except BaseException:
                checking.cancel()
                raise
            yield SearchStart(ray_up, loading, checking, began)


# What both the trial code (torch, ONNX, ONNX Runtime) or the dry run (whose export imports
# more, lazily) and ``ray.init`` import (measured with Ray 2.60 and torch 2.13;
# tests/orchestrator/test_search_start.py checks it): imported before the two run side by side,
# so that no module is imported by both threads at once (two threads entering a circular import
# from two ends can see a half-made module). The rest of the search (MLflow, which shares click
# and OpenTelemetry with ``ray.init``) is imported once both are done (``slimtune search``).
_SHARED_WITH_RAY_INIT = ("gzip", "pkgutil", "timeit", "ctypes.util")


# Below this many usable cores, the search's code is imported and the task loaded before Ray
# starts, and only the dry run runs beside Ray's start (as before the start was overlapped):
# on the 2-core development machine, importing beside Ray's start made the command 0.4-0.9 s
# slower (BENCHMARKS.md, "The search's start"): two cores cannot run both side by side.
BESIDE_RAY_MIN_CORES = 4


def starts_beside_ray() -> bool:
    """Whether this machine has the cores to import and load the task beside Ray's start."""
    return len(usable_cores()) >= BESIDE_RAY_MIN_CORES


def _load_task(spec: SearchSpec) -> Task:
    from trials import load_task

    return load_task(spec.task)


def _preflight(spec: SearchSpec, loading: Future[Task], cache_dir: Path) -> str:
    from orchestrator._schemes import preflight

    task = loading.result()
    # torch configures its loggers when imported (by now): keep the exporter's notices quiet.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    return preflight(spec, task, cache_dir)


def local_env() -> None:
    """Set what every process of a local search needs, before Ray starts: its workers inherit
    the driver's environment."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Save the search's state (trials, the sampler's study) every second, so that a driver
    # killed mid-search loses at most a second of bookkeeping; --resume restores from it.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Ray Tune's default per-trial loggers (CSV, JSON, TensorBoard) run in its loop at every
    # trial's start, result and end (~5 ms per trial, a TensorBoard writer thread each) and
    # duplicate what MLflow records; the search adds back only the JSON one (see _tune.run_tune).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # A trial stopped early ends its thread inside tune.report; Ray waits this long (default
    # 2 s) for it before reusing the actor, and fails the next trial if it has not ended (on a
    # loaded machine the unwinding, e.g. leaving the latency gate, can take longer).
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "30")


def ray_address(opts: SearchOptions) -> str | None:
    """The cluster to join; None: start one on this machine. Inside `ray job submit`,
    RAY_ADDRESS names the cluster: join it rather than start one."""
    return opts.address or os.environ.get("RAY_ADDRESS") or None


@contextlib.contextmanager
def search_ray(spec: SearchSpec, opts: SearchOptions) -> Iterator[SearchRay]:
    """Ray for the block: started here (under ``isolation: cores`` this process, and so all
    that Ray starts, keeps off the meter's cores) or joined; its resources checked against
    the spec before the block runs; shut down when it ends. A Ray started here removes its
    temporary directory when the block ends cleanly; when the block raises, the directory
    stays, with Ray's logs of the workers, for the failure to be looked into."""
    with _meter_node(spec, opts) as node:
        temp_dir = start_ray(spec, opts)
        try:
            yield SearchRay(node, temp_dir)
        finally:
            import ray

            ray.shutdown()
        if temp_dir is not None:  # reached only when the block ended cleanly
            shutil.rmtree(temp_dir, ignore_errors=True)


def _meter_node(
    spec: SearchSpec, opts: SearchOptions
) -> contextlib.AbstractContextManager[NodeCores | None]:
    if ray_address(opts) is not None:
        return contextlib.nullcontext()
    return keep_off_meter_cores(spec.latency, trial_cpus=spec.resources.cpu)


def start_ray(spec: SearchSpec, opts: SearchOptions) -> Path | None:
    """Start or join Ray and check its resources against the spec (shut down if refused).
    Returns the temporary directory of a Ray started here (short: its socket paths are
    limited in length), None when joining one."""
    import ray

    init_kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    address = ray_address(opts)
    temp_dir = None
    if address is None:
        temp_dir = Path(tempfile.mkdtemp(prefix="slimtune-ray-"))
        init_kwargs["_temp_dir"] = str(temp_dir)
    ray.init(address=address, **init_kwargs)
    try:
        check_resources(spec, ray.nodes())
    except BaseException:
        ray.shutdown()
        raise
    return temp_dir
