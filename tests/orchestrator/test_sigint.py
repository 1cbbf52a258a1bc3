"""A SIGINT that Python drops (raised inside a callback whose exceptions are ignored) is still
seen by the search before its trials start."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable

import pytest

from orchestrator._sigint import remembered_sigint


def _swallowing(fn: Callable[[], None]) -> None:
    """What a weakref or GC callback does with an exception: print it and go on."""
    with contextlib.suppress(KeyboardInterrupt):
        fn()


def _sigint_now() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)  # the handler runs in the main thread at the next bytecode


def test_a_dropped_sigint_is_remembered_and_the_handler_restored() -> None:
    before = signal.getsignal(signal.SIGINT)
    with remembered_sigint() as interrupted:
        assert not interrupted()
        _swallowing(_sigint_now)  # KeyboardInterrupt raised, then dropped
        assert interrupted()
    assert signal.getsignal(signal.SIGINT) is before


def test_the_previous_handler_still_raises() -> None:
    with remembered_sigint(), pytest.raises(KeyboardInterrupt):
        _sigint_now()
