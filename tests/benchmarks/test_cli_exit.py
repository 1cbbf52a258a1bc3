"""benchmarks/cli_exit.py: its timing of a command's lines and exit (the real run, searches on a
quiet machine, is in benchmarks/BENCHMARKS.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.cli_exit import VARIANTS, timed_run


def test_lines_and_exit_are_stamped_in_order(tmp_path: Path) -> None:
    script = "import sys, time; print('a', flush=True); time.sleep(0.3); print(sys.argv[1:])"
    first, last, end = timed_run(["-c", script], tmp_path)
    assert 0 < first < last <= end
    assert last - first >= 0.3  # the sleep falls between the two lines


def test_a_failing_command_is_not_timed(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="exited 4 with 1 lines"):
        timed_run(["-c", "print('x'); raise SystemExit(4)"], tmp_path)


def test_the_two_variants_are_the_command_and_main_alone() -> None:
    command, plain = VARIANTS.values()
    assert command == ["-m", "orchestrator.cli"]
    assert "from orchestrator.cli import main" in plain[1] and "entry" not in plain[1]
