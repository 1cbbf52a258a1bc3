"""Files written whole or not at all: the caches and state files of a search (the baseline, the
int8 format choice, the plan tables, the scheme checks, the early-stopping state).

Each write goes to a temporary file of its own in the same folder (two processes writing the
same cache never share one), is flushed to disk, then renamed over the target: a reader sees
the old file or the new one, never half of one, even after a crash or a full disk (the
temporary file is removed on failure)."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` whole through ``write(handle)`` (binary), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` whole (see :func:`atomic_write`)."""
    atomic_write(path, lambda handle: handle.write(text.encode()))


def safe_name(name: str) -> str:
    """``name`` as a file name part: runs of other characters than letters, digits, ``_.-``
    become one ``_`` ("task" if nothing is left)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "task"
