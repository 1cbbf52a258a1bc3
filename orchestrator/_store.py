"""What the commands that read a search (``select``, ``report``, ``rebuild``, ``ui``) check before
they touch it: the ``--tracking-uri`` (no credentials), the store (there, and a readable MLflow
database), the ``--out`` folder (writable), and errors of the store met while reading it. Each
failure is a ``ConfigError`` (exit 2) or a ``TrackingError`` with the fix, never a traceback."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

from searchspace import CREDENTIALS_FIX, ConfigError, credentials_in, redact_uri

# Tables every MLflow SQLite store has; a database without them is not an MLflow store.
_MLFLOW_TABLES = frozenset({"experiments", "runs", "alembic_version"})


def check_uri(uri: str | None, *, field: str) -> None:
    """Refuse a URI that holds credentials (field: the option or config field it came from)."""
    found = credentials_in(uri) if uri is not None else None
    if found is not None:
        raise ConfigError(
            field=field,
            value=redact_uri(str(uri)),
            rule=f"a URI must not hold credentials (it would show in logs and in other "
            f"processes' argv), and this one holds {found}",
            fix=CREDENTIALS_FIX,
        )


def existing_store(given: str | None, cwd: Path, *, field: str = "--tracking-uri") -> str:
    """The tracking URI of a store that must exist already (to be read, not created).

    A SQLite store must be a file that SQLite can read, with MLflow's tables in it: a path with
    no file is reported as missing (MLflow would create an empty store there), and a truncated
    or garbage file as damaged. Other stores (a server) are checked by the first request.
    """
    from orchestrator._tracking import resolve_tracking_uri  # imports mlflow: on use only

    check_uri(given, field=field)
    uri = resolve_tracking_uri(given, cwd)
    if not uri.startswith("sqlite:///"):
        return uri
    path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    if not path.is_file():
        raise ConfigError(
            field=field,
            value=redact_uri(uri),
            rule=f"there is no MLflow store at {path}"
            + (" (it is not a file)" if path.exists() else ""),
            fix="run this in the folder where `slimtune search` ran (its mlflow.db), or pass "
            "--tracking-uri sqlite:////abs/path/mlflow.db",
        )
    problem = _sqlite_problem(path)
    if problem is not None:
        raise ConfigError(
            field=field,
            value=redact_uri(uri),
            rule=f"{path} is not a readable MLflow store: {problem}",
            fix="point --tracking-uri at an intact mlflow.db (restore it from a backup if it "
            "was damaged; a copy taken while a search was writing may be incomplete)",
        )
    return uri


def _sqlite_problem(path: Path) -> str | None:
    """What is wrong with the SQLite file at ``path`` as an MLflow store (``None``: nothing).
    Opened read-only: checking never changes the file."""
    try:
        with contextlib.closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        ) as con:
            rows = con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            tables = {r[0] for r in rows}
            missing = sorted(_MLFLOW_TABLES - tables)
            if missing:
                return f"it is an SQLite database without MLflow's tables ({', '.join(missing)})"
            check = con.execute("PRAGMA quick_check").fetchone()
            if not check or check[0] != "ok":
                return f"SQLite's integrity check fails ({check[0] if check else 'no answer'})"
    except sqlite3.Error as exc:
        return f"SQLite cannot read it ({exc})"
    return None


@contextlib.contextmanager
def store_errors(uri: str) -> Iterator[None]:
    """Turn an error of the store met while reading it (a damaged page, a server that went
    away) into a ``TrackingError`` that names the store; slimtune's own errors pass through."""
    from mlflow.exceptions import MlflowException

    from orchestrator._tracking import TrackingError
    from searchspace import SlimtuneError

    try:
        yield
    except SlimtuneError:
        raise
    except (MlflowException, sqlite3.Error, _sqlalchemy_error()) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise TrackingError(
            f"the MLflow store at {redact_uri(uri)} could not be read ({type(exc).__name__}: "
            f"{first[:300]}). Fix: check that it is intact and reachable, or pass another "
            "--tracking-uri."
        ) from None


def _sqlalchemy_error() -> type[Exception]:
    try:
        from sqlalchemy.exc import SQLAlchemyError
    except ImportError:  # a client without SQLAlchemy talks to a server only
        return sqlite3.Error
    return SQLAlchemyError


def writable_dir(path: Path, *, field: str = "--out", shown: Path | None = None) -> Path:
    """``path`` as an absolute folder that exists and can be written (created if need be)."""
    target = path.expanduser().resolve()
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target, prefix=".slimtune-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(
            field=field,
            value=str(shown or path),
            rule=f"slimtune must be able to create and write the folder {target} "
            f"({exc.strerror or type(exc).__name__})",
            fix=f"pass a folder you can write to (e.g. {Path.cwd() / 'out'})",
        ) from None
    return target


def writable_file_parent(path: Path, *, field: str = "--out") -> Path:
    """``path`` (a file to write, or a folder to write into) whose folder can be written."""
    target = path.expanduser().resolve()
    folder = target if target.is_dir() else target.parent
    writable_dir(folder, field=field, shown=path)
    if target.exists() and not target.is_dir() and not os.access(target, os.W_OK):
        raise ConfigError(
            field=field,
            value=str(path),
            rule="the file exists and cannot be overwritten",
            fix="pass another file name, or a folder",
        )
    return target


def check_storage(storage: str | None, workdir: Path) -> None:
    """Fail before anything is written to MLflow when Ray Tune could not keep the search's state
    where the config says (``storage``, else ``<workdir>/.slimtune/ray``): a local path must be
    a folder slimtune can create and write. Nothing is left behind by the check. A URI (s3://,
    gs://, ...) is checked by Ray when the search starts."""
    if storage is not None and "://" in storage and not storage.startswith("file://"):
        return
    field = "storage" if storage is not None else "--workdir"
    shown = storage if storage is not None else str(workdir)
    local = storage.removeprefix("file://") if storage is not None else None
    target = Path(local).expanduser() if local is not None else workdir / ".slimtune" / "ray"
    target = Path(os.path.abspath(target))
    created: list[Path] = []
    try:
        missing = [p for p in (target, *target.parents) if not p.exists()]
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
        if not target.is_dir():
            raise NotADirectoryError(0, "it is a file, not a folder")
        with tempfile.NamedTemporaryFile(dir=target, prefix=".slimtune-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(
            field=field,
            value=shown,
            rule=f"Ray Tune keeps the search's state in {target}, and slimtune cannot create "
            f"and write that folder ({exc.strerror or type(exc).__name__})",
            fix="give `storage:` a folder you can write (or a URI such as s3://bucket/path), "
            "or leave it out for <workdir>/.slimtune/ray",
        ) from None
    finally:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
