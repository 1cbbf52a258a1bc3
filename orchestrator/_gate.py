"""The measurement gate: a reader/writer lock between the processes of one machine, so that a
latency measurement can have the machine to itself (``latency.isolation: pause``; see
``orchestrator._latency``)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

GATE_DIR_ENV = "SLIMTUNE_GATE_DIR"
# A measurement waits at most this long for the trials on its machine to pause (a trial offers
# the gate at every training step; export and quantization of a large model can take longer).
# Past it the measurement runs anyway and is tagged latency_gate=timeout.
GATE_TIMEOUT_S = 120.0


def default_gate_dir() -> Path:
    """The node-local directory of the gate's lock files: ``$SLIMTUNE_GATE_DIR``, else
    ``<tmp>/slimtune-<uid>/`` (one gate per user and machine, shared by all searches)."""
    configured = os.environ.get(GATE_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"slimtune-{os.getuid()}"


@dataclass(frozen=True)
class GateClaim:
    """What a measurement got from the gate: ``quiet`` when it held it exclusively (every
    trial on the machine paused), and how long it waited for that."""

    quiet: bool
    wait_s: float


class MeasureGate:
    """A reader/writer lock between the processes of one machine (``fcntl.flock`` on two files
    in ``directory``): trials are readers, a latency measurement is the writer.

    ``working()`` holds it shared; ``pause_point()`` (cheap: one non-blocking probe) lets a
    waiting measurement through; ``stepped_aside()`` releases it around a wait for the meter;
    ``exclusive()`` is the measurement's side. The kernel drops a dead process's locks.
    One object per process and thread; it is not re-entrant across threads.
    """

    def __init__(self, directory: Path | None = None, *, poll_s: float = 0.001) -> None:
        self.directory = directory or default_gate_dir()
        self._poll_s = poll_s
        self._fds: tuple[int, int] | None = None
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """Hold the gate shared for the block (a no-op when already held)."""
        if self._held:
            yield
            return
        self._enter()
        try:
            yield
        finally:
            self._leave()

    def pause_point(self) -> None:
        """If a measurement waits for this machine, release the gate until it is done."""
        if not self._held:
            return
        turnstile, _ = self._files()
        try:
            fcntl.flock(turnstile, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise
            self._leave()
            self._enter()
            return
        fcntl.flock(turnstile, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def stepped_aside(self) -> Iterator[None]:
        """Release a shared hold for the block (this process waits for a measurement)."""
        if not self._held:
            yield
            return
        self._leave()
        try:
            yield
        finally:
            self._enter()

    @contextlib.contextmanager
    def exclusive(self, *, timeout_s: float = GATE_TIMEOUT_S) -> Iterator[GateClaim]:
        """Hold the gate alone: wait for the trials to reach a pause point (at most
        ``timeout_s``; then go on with ``quiet=False``). New readers wait from the start."""
        if self._held:
            raise RuntimeError("a process holding the gate shared cannot take it exclusive")
        turnstile, main = self._files()
        start = time.perf_counter()
        fcntl.flock(turnstile, fcntl.LOCK_EX)  # other measurements queue here
        quiet = False
        try:
            deadline = start + timeout_s
            while True:
                try:
                    fcntl.flock(main, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    quiet = True
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                        raise
                if time.perf_counter() >= deadline:
                    break
                time.sleep(self._poll_s)
            yield GateClaim(quiet=quiet, wait_s=time.perf_counter() - start)
        finally:
            if quiet:
                fcntl.flock(main, fcntl.LOCK_UN)
            fcntl.flock(turnstile, fcntl.LOCK_UN)

    def close(self) -> None:
        """Release everything and close the lock files."""
        if self._fds is not None:
            for fd in self._fds:
                os.close(fd)  # closing drops this process's locks on the file
            self._fds = None
        self._held = False

    def _enter(self) -> None:
        turnstile, main = self._files()
        fcntl.flock(turnstile, fcntl.LOCK_SH)  # waits while a measurement holds or awaits it
        try:
            fcntl.flock(main, fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        self._held = True

    def _leave(self) -> None:
        _, main = self._files()
        fcntl.flock(main, fcntl.LOCK_UN)
        self._held = False

    def _files(self) -> tuple[int, int]:
        if self._fds is None:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
            self._fds = (
                os.open(self.directory / "latency-turnstile.lock", flags, 0o600),
                os.open(self.directory / "latency-gate.lock", flags, 0o600),
            )
        return self._fds
