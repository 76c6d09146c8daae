"""Keyboard and mouse events through the X11 XTEST extension (python-xlib, imported lazily).

XTEST events are indistinguishable from a real keyboard's for X clients (SDL, Wine/Proton games).
Without a window manager, focus follows the pointer: move the pointer into the game window first.
"""

from __future__ import annotations

import os

from rayapp.envs.inputs.keys import Key
from rayapp.errors import InputDeviceError

__all__ = ["XTestSink", "open_display"]

BUTTONS = {"left": 1, "middle": 2, "right": 3, "scroll_up": 4, "scroll_down": 5}


def open_display(name: str | None = None):
    """An Xlib Display for `name` (default $DISPLAY), or an InputDeviceError saying what to do."""
    try:
        from Xlib import display as xdisplay
        from Xlib import error as xerror
    except ImportError:
        raise InputDeviceError(
            "keyboard/mouse input on Linux needs python-xlib: pip install 'rayapp[gamepc]'"
        ) from None
    name = name or os.environ.get("DISPLAY", "")
    if not name:
        raise InputDeviceError(
            "no X display: DISPLAY is not set (run on the game's desktop, or start Xvfb and set DISPLAY=:N)"
        )
    try:
        return xdisplay.Display(name)
    except (xerror.DisplayError, OSError) as e:
        raise InputDeviceError(f"cannot open X display {name!r}: {e} (is the X server running?)") from None


class XTestSink:
    """Sends key, pointer and button events to one X display with XTEST."""

    def __init__(self, display: str | None = None):
        self.display = open_display(display)
        if not self.display.has_extension("XTEST"):
            self.display.close()
            raise InputDeviceError(f"X display {display or os.environ.get('DISPLAY')} has no XTEST extension")
        from Xlib import XK, X
        from Xlib.ext import xtest

        self._X, self._XK, self._xtest = X, XK, xtest
        self._codes: dict[str, int] = {}

    def keycode(self, k: Key) -> int:
        code = self._codes.get(k.name)
        if code is None:
            code = self.display.keysym_to_keycode(self._XK.string_to_keysym(k.keysym))
            if not code:
                raise InputDeviceError(f"key {k.name!r} ({k.keysym}) is not on this X server's keyboard map")
            self._codes[k.name] = code
        return code

    def prepare(self, k: Key) -> None:
        """Resolve `k` now, so a key missing from the server's map fails at start, not mid-game."""
        self.keycode(k)

    def key(self, k: Key, down: bool) -> None:
        X = self._X
        self._xtest.fake_input(self.display, X.KeyPress if down else X.KeyRelease, self.keycode(k))

    def move(self, x: int, y: int) -> None:
        self._xtest.fake_input(self.display, self._X.MotionNotify, x=int(x), y=int(y))

    def button(self, name: str, down: bool) -> None:
        X = self._X
        self._xtest.fake_input(self.display, X.ButtonPress if down else X.ButtonRelease, BUTTONS[name])

    def flush(self) -> None:
        self.display.sync()  # sync, not flush: the server has the events when apply() returns

    def close(self) -> None:
        try:
            self.display.close()
        except Exception:
            pass
