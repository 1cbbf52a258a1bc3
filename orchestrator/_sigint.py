"""A Ctrl-C that Python would drop, remembered until the search can act on it."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType


@contextlib.contextmanager
def remembered_sigint() -> Iterator[Callable[[], bool]]:
    """Yield a function that says whether a SIGINT came inside this block.

    Python raises KeyboardInterrupt in whatever the main thread runs when SIGINT arrives, also
    inside a weakref or garbage-collection callback, where it is printed ("Exception ignored
    in ...") and dropped: a search interrupted at such a moment went on to the end and exited 0.
    Here the signal is also recorded, so the search can check it before its trials start. The
    previous handler still runs (KeyboardInterrupt by default) and is restored on exit. Outside
    the main thread (where Python allows no handlers) nothing is recorded."""
    seen = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield seen.is_set
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:  # the process was told to ignore Ctrl-C: keep it so
        yield seen.is_set
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        seen.set()
        if callable(previous):
            previous(signum, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield seen.is_set
    finally:
        signal.signal(signal.SIGINT, previous)
