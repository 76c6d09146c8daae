"""What every input backend is: `apply(action)` holds the inputs an action maps to until the next
`apply`, `release_all()` lets everything go, `pressed()` says what is held now; closing (and leaving a
`with` block any way, and the process exiting through atexit or SIGTERM/SIGHUP with
`release_on_signals()`) releases everything. An input left pressed keeps driving the game after the
agent has gone, so release never stops at the first error: it tries every input and raises after."""

from __future__ import annotations

import atexit
import signal
import threading
import weakref
from typing import Any

__all__ = ["InputBackend", "release_every_backend", "release_on_signals"]

_LIVE: weakref.WeakSet[InputBackend] = weakref.WeakSet()
_LOCK = threading.Lock()


class InputBackend:
    """Base class; subclasses implement `_apply`, `_release_all`, `pressed` and may override `_close`."""

    kind = "none"

    def __init__(self) -> None:
        self.closed = False
        with _LOCK:
            _LIVE.add(self)

    # ---- what owners call -------------------------------------------------------------------
    def apply(self, action: Any) -> None:
        """Hold what `action` maps to until the next apply (inputs no longer wanted are released
        first). If sending fails halfway, everything is released before the error goes up."""
        if self.closed:
            raise RuntimeError(f"{self.kind} input backend is closed")
        try:
            self._apply(action)
        except BaseException:
            self.release_all()
            raise

    def release_all(self) -> None:
        """Release every held input (idempotent)."""
        if not self.closed:
            self._release_all()

    def pressed(self) -> tuple[str, ...]:
        """Names of the inputs held now (keys, mouse buttons, gamepad buttons and deflected axes)."""
        raise NotImplementedError

    def describe(self) -> str:
        """What the last action became on the device, for the player's console ('-': nothing held)."""
        return "+".join(self.pressed()) or "-"

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._release_all()
        finally:
            self.closed = True
            with _LOCK:
                _LIVE.discard(self)
            self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- what subclasses implement ----------------------------------------------------------
    def _apply(self, action: Any) -> None:
        raise NotImplementedError

    def _release_all(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        pass


def _release_each(items, release) -> None:
    """Call `release(item)` for every item even if some fail; raise the first failure after."""
    first: BaseException | None = None
    for item in list(items):
        try:
            release(item)
        except Exception as e:  # keep releasing the others
            first = first or e
    if first is not None:
        raise first


@atexit.register
def release_every_backend() -> None:
    """Close every backend still open (runs at interpreter exit, after an uncaught exception too)."""
    with _LOCK:
        live = list(_LIVE)
    for b in live:
        try:
            b.close()
        except Exception:
            pass


def _on_signal(signum, frame) -> None:
    # only raise: releasing here could re-enter a device library the signal interrupted (python-xlib
    # holds a non-reentrant lock while it sends); the SystemExit unwinds through apply()'s and the
    # with-blocks' releases, and atexit releases whatever is left
    raise SystemExit(128 + signum)


def release_on_signals(signals=(signal.SIGTERM, signal.SIGHUP)) -> None:
    """Make SIGTERM and SIGHUP release every input and exit (status 128 + signal), where they would
    otherwise kill the process with keys still down. Only signals whose handler is still the
    default are taken; call it from the main thread (Python's rule for signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for s in signals:
        if signal.getsignal(s) is signal.SIG_DFL:
            signal.signal(s, _on_signal)
