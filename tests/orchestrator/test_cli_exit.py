"""How the `slimtune` command exits: main's code, its output flushed, exit handlers run, and
the interpreter's last full garbage collection skipped (``gc.freeze``; BENCHMARKS.md)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

from tests.orchestrator.conftest import cli_env

PROBE = """
import atexit, gc, sys
import orchestrator.cli as cli

def fake_main():
    print("work done", flush=False)  # left in the buffer: the exit must flush it
    return 3

cli.main = fake_main
atexit.register(lambda: print("at exit: frozen", gc.get_freeze_count() > 0))
cli.entry()
print("not reached")
"""


def test_the_command_exits_with_mains_code_after_freezing_the_collector() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.splitlines() == ["work done", "at exit: frozen True"], proc.stdout
    assert proc.stderr == ""


def test_the_installed_command_and_python_m_both_go_through_entry() -> None:
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "slimtune"]
    assert script.value == "orchestrator.cli:entry"
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "schema"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.lstrip().startswith("{"), proc.stderr[-2000:]
