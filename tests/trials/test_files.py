"""trials._files: a cache or state file is written whole or not at all."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import pytest

from trials import write_text_atomic
from trials._files import atomic_write, safe_name


def test_a_write_creates_the_folder_and_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "new" / "cache.json"
    write_text_atomic(path, '{"a": 1}')
    write_text_atomic(path, '{"a": 2}')
    assert path.read_text() == '{"a": 2}'
    assert [p.name for p in path.parent.iterdir()] == ["cache.json"]  # no temporary left


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_text_atomic(path, "old")

    def half(handle: BinaryIO) -> None:
        handle.write(b"ne")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(path, half)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_two_writers_never_share_a_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.json"
    seen: list[str] = []

    def outer(handle: BinaryIO) -> None:
        seen.append(handle.name)
        atomic_write(path, lambda inner: seen.append(inner.name) or inner.write(b"inner"))
        handle.write(b"outer")

    atomic_write(path, outer)
    assert len(set(seen)) == 2
    assert path.read_text() == "outer"


def test_safe_names() -> None:
    assert safe_name("host name/1") == "host_name_1"
    assert safe_name("") == "task"
