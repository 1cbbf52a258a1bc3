"""Check a search's saved state before ``--resume`` hands it to Ray Tune.

The state lives under ``storage`` (default ``.slimtune/ray``), in ``search-<run id>/``. Two kinds
of file in it are pickles that Ray Tune loads, and so runs as code: ``tuner.pkl`` and
``search_gen_state-*.json`` (inherent to ``Tuner.restore``). So a local state directory must be
trusted like code: one that another user owns or may write to is refused, with the fix. The
searcher's own state is JSON (``orchestrator._searcher``).

A damaged file (a truncated copy, a full disk, garbage) made Ray log "Failed to restore" and
hang; each file Ray reads is checked here first, without running it: a pickle's opcodes are
walked to its end (``pickletools``), JSON is parsed, the searcher state is validated against the
search space. A problem is an error naming the file and the fix, in well under a second.
"""

from __future__ import annotations

import grp
import json
import os
import pickletools
import pwd
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from optuna.distributions import BaseDistribution

from orchestrator._searcher import OptunaAskTell, read_state
from orchestrator._tracking import find_experiment, resumable_search_run
from searchspace import SearchSpec, SlimtuneError

# Ray Tune's files in an experiment directory, newest by name (as Ray picks them).
_PICKLES = ("tuner.pkl", "search_gen_state-*.json")
_JSON = ("experiment_state-*.json",)
_SEARCHER = OptunaAskTell.CKPT_FILE_TMPL.format("*")


class SavedStateDamaged(SlimtuneError):
    """A file of a search's saved state cannot be read back."""


class SavedStateNotTrusted(SlimtuneError):
    """A search's saved state is owned by another user or writable by others."""


def state_dir(storage: str, parent_run_id: str) -> str:
    """Where Ray Tune keeps the state of the search whose search run is ``parent_run_id``."""
    return f"{storage.rstrip('/')}/search-{parent_run_id}"


def check_saved_state(path: str, distributions: Mapping[str, BaseDistribution]) -> None:
    """Refuse a local saved state at ``path`` that is not trusted or not intact; read-only.

    A remote ``path`` (``s3://...``) is left to Ray Tune: its owner and modes are the storage
    service's. A missing directory is left to the caller (nothing to resume)."""
    if "://" in path or not Path(path).is_dir():
        return
    exp = Path(path)
    for p in [exp.parent, *_walk(exp)]:
        _check_trusted(p)
    for pattern in _PICKLES:
        newest = _newest(exp, pattern)
        if newest is not None:
            _check_pickle(newest)
    for pattern in _JSON:
        newest = _newest(exp, pattern)
        if newest is not None:
            _check_json(newest)
    newest = _newest(exp, _SEARCHER)
    if newest is not None:
        read_state(newest, distributions)


def _walk(root: Path) -> Iterator[Path]:
    yield root
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            yield Path(dirpath, name)


def _newest(exp: Path, pattern: str) -> Path | None:
    found = sorted(exp.glob(pattern))
    return found[-1] if found else None


def _check_trusted(path: Path) -> None:
    st = path.stat()
    problem = ""
    if st.st_uid != os.getuid():
        problem = f"is owned by {_user(st.st_uid)}, not by you ({_user(os.getuid())})"
    elif st.st_mode & stat.S_IWOTH:
        problem = f"is writable by every user (mode {stat.filemode(st.st_mode)})"
    elif st.st_mode & stat.S_IWGRP and not _private_group(st.st_gid, st.st_uid):
        problem = f"is writable by group {_group(st.st_gid)} (mode {stat.filemode(st.st_mode)})"
    if problem:
        raise SavedStateNotTrusted(
            f"the saved search state {path} {problem}. --resume loads Ray Tune's pickles from "
            "it (tuner.pkl), which run as code, so `storage` must be trusted like code. Fix: "
            "if you trust its contents, make it yours and writable by you only (`chown -R "
            f"$USER {path.parent}` and `chmod -R go-w {path.parent}`); otherwise start a new "
            "search without --resume."
        )


def _private_group(gid: int, uid: int) -> bool:
    """A user-private group (named like its user, who has it as primary group, no members)."""
    try:
        group, user = grp.getgrgid(gid), pwd.getpwuid(uid)
    except KeyError:
        return False
    return group.gr_name == user.pw_name and user.pw_gid == gid and not group.gr_mem


def _user(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    try:
        return f"{grp.getgrgid(gid).gr_name!r} (gid {gid})"
    except KeyError:
        return f"gid {gid}"


def _check_pickle(path: Path) -> None:
    """Walk the pickle's opcodes to its STOP without executing any (``pickletools``)."""
    try:
        for _ in pickletools.genops(path.read_bytes()):
            pass
    except Exception as exc:  # genops raises ValueError, and others on garbage
        raise _damaged(path, f"it is not a complete pickle ({type(exc).__name__}: {exc})") from exc


def _check_json(path: Path) -> None:
    try:
        json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _damaged(path, f"it is not valid JSON ({type(exc).__name__}: {exc})") from exc


def _damaged(path: Path, problem: str) -> SavedStateDamaged:
    return SavedStateDamaged(
        f"the saved search state file {path} is damaged: {str(problem)[:300]}. --resume cannot "
        "continue the search from it. Fix: restore the file from a backup, or start a new "
        "search without --resume (the trials recorded so far stay in MLflow)."
    )


def check_resume_state(
    client: MlflowClient, spec: SearchSpec, workdir: Path, distributions: Mapping[str, Any]
) -> None:
    """Check the saved state of the search ``--resume`` would continue (:func:`check_saved_state`)
    before Ray starts or MLflow is written; an experiment with nothing to resume is left to the
    search, which says so."""
    experiment_id = find_experiment(client, spec.experiment)
    if experiment_id is None:
        return
    parent = resumable_search_run(client, experiment_id, spec.experiment)
    check_saved_state(state_dir(spec.storage or default_storage(workdir), parent), distributions)


def default_storage(workdir: Path) -> str:
    """Where a search keeps Ray Tune's state when the config names no ``storage``."""
    return str(workdir / ".slimtune" / "ray")
