"""`slimtune schema | head`: a reader that closes the pipe early ends the command quietly."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.orchestrator.conftest import cli_env


def test_a_closed_pipe_ends_the_command_quietly() -> None:
    # A real pipe whose reader is gone before anything is written, as `| head` is once it has
    # its lines: every write fails with EPIPE (deterministic, unlike racing a real `head`).
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "schema"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=cli_env(),
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert proc.stderr == "", proc.stderr  # no BrokenPipeError traceback, no message
    assert proc.returncode == 141  # 128 + SIGPIPE, what a shell reports for `cat big | head`
