"""`StopSignals`: Ctrl+C, SIGTERM and SIGHUP end a frame loop at its next step, cleanly, through the
loop's own releases and writes (the recorder and the live player).

SIGINT gets a handler too, not only Python's KeyboardInterrupt: a process started in the
background of a shell begins with SIGINT ignored, and Python then never raises it. Handlers are
installed from the main thread only (elsewhere `install` does nothing) and `restore` puts the old
ones back.

`kept_sigint()`: Ray Train's `fit()` installs a SIGINT handler of its own (a graceful abort of that
run) and leaves it installed when it returns, so a later stage in the same process (the pipeline's
fine-tuning, a benchmark) would swallow Ctrl+C; the block puts the handler that was there back.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["StopSignals", "kept_sigint"]

NAMES = {"SIGINT": "Ctrl+C"}


class StopSignals:
    def __init__(self, install: bool = True, names: dict[str, str] | None = None) -> None:
        """`names`: how a signal is named in `reason` (default: SIGINT as "Ctrl+C")."""
        self.reason = ""
        self.names = NAMES if names is None else names
        self._old: dict[int, Any] = {}
        if install:
            self.install()

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for name in ("SIGINT", "SIGTERM", "SIGHUP"):
            if hasattr(signal, name):
                s = getattr(signal, name)
                self._old[s] = signal.signal(s, self._stop)

    def _stop(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        self.reason = self.reason or self.names.get(name, name)

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}


@contextlib.contextmanager
def kept_sigint() -> Iterator[None]:
    """Restore SIGINT's handler when the block ends, however it ends (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        if old is not None:  # None: a handler not installed from Python, which cannot be put back
            signal.signal(signal.SIGINT, old)
