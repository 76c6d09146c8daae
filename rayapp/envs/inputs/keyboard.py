"""The keyboard backend: a discrete action holds its key combination for the whole step."""

from __future__ import annotations

import sys
from typing import Any

from rayapp.envs.inputs.base import InputBackend, _release_each
from rayapp.envs.inputs.keys import Key, KeyMapping
from rayapp.envs.inputs.win32 import SendInputSink
from rayapp.envs.inputs.x11 import XTestSink

__all__ = ["KeyboardBackend", "open_sink"]


def open_sink(display: str | None = None):
    """The system's key/pointer event sender: X11 XTEST on Linux, SendInput on Windows."""
    if sys.platform == "win32":
        return SendInputSink()
    return XTestSink(display)


class KeyboardBackend(InputBackend):
    """`apply(action)` releases the keys the new action no longer wants, then presses the new ones;
    keys both actions share stay down (no spurious release between steps)."""

    kind = "keyboard"

    def __init__(self, mapping: KeyMapping | dict, sink: Any = None, display: str | None = None):
        self.mapping = mapping if isinstance(mapping, KeyMapping) else KeyMapping(mapping)
        self.sink = sink if sink is not None else open_sink(display)
        prepare = getattr(self.sink, "prepare", None)
        if prepare is not None:
            try:
                for i in range(len(self.mapping)):
                    for k in self.mapping.keys(i):
                        prepare(k)
            except BaseException:
                self.sink.close()
                raise
        self._held: dict[str, Key] = {}
        super().__init__()

    def _apply(self, action) -> None:
        wanted = {k.name: k for k in self.mapping.keys(action)}
        for name in [n for n in self._held if n not in wanted]:
            self.sink.key(self._held[name], False)
            del self._held[name]
        for name, k in wanted.items():
            if name not in self._held:
                self._held[name] = k  # counted as held before sending: a failure still releases it
                self.sink.key(k, True)
        self.sink.flush()

    def _release_all(self) -> None:
        held, self._held = list(self._held.values()), {}
        try:
            _release_each(held, lambda k: self.sink.key(k, False))
        finally:
            self.sink.flush()

    def pressed(self) -> tuple[str, ...]:
        return tuple(sorted(self._held))

    def _close(self) -> None:
        self.sink.close()
