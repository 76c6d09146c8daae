"""Reading a person's inputs (for recording a human teacher): which keys are held now, which pad
state, and the action of the configured mapping that they play. Nothing is ever sent or pressed.

The keyboard is read as state, at the moment the recorder samples a frame: the X server's key map
(X11 `QueryKeymap`, python-xlib; it holds what real keyboards and XTEST have pressed, whatever
window has the focus) on Linux, `GetAsyncKeyState` on Windows. A key pressed and released between
two samples (shorter than one frame period) is not seen; a held key is seen at the next sample, so
the recorded action lags the person's by at most one frame.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

from rayapp.envs.inputs.factory import _mapping
from rayapp.envs.inputs.gamepad import dead_zones_from_config
from rayapp.envs.inputs.keys import Key, KeyMapping
from rayapp.envs.inputs.pad_read import PadReader, open_pad_state
from rayapp.envs.inputs.x11 import open_display
from rayapp.errors import ConfigError, InputDeviceError

__all__ = ["KeyReader", "X11KeyState", "Win32KeyState", "make_input_reader", "win32_virtual_key"]

MAPVK_VSC_TO_VK_EX = 3


class X11KeyState:
    """The X server's held keys (one QueryKeymap round trip per read)."""

    def __init__(self, keys: list[Key], display: str | None = None):
        from Xlib import XK

        self.display = open_display(display)
        self._codes: dict[int, str] = {}
        for k in keys:
            code = self.display.keysym_to_keycode(XK.string_to_keysym(k.keysym))
            if not code:
                self.display.close()
                raise InputDeviceError(f"key {k.name!r} ({k.keysym}) is not on this X server's keyboard map")
            self._codes[code] = k.name

    def held(self) -> set[str]:
        keymap = self.display.query_keymap()
        return {n for c, n in self._codes.items() if keymap[c >> 3] >> (c & 7) & 1}

    def close(self) -> None:
        try:
            self.display.close()
        except Exception:
            pass


def win32_virtual_key(k: Key, map_key=None) -> int:
    """The virtual-key code of `k`'s scan code (MapVirtualKeyW; extended keys with the E0 prefix)."""
    scan = k.scan | (0xE000 if k.extended else 0)
    return int(map_key(scan, MAPVK_VSC_TO_VK_EX))


class Win32KeyState:
    """Held keys through GetAsyncKeyState (user32, loaded only on Windows)."""

    def __init__(self, keys: list[Key]):
        if sys.platform != "win32":
            raise InputDeviceError("Win32KeyState needs Windows")
        self.user32 = ctypes.WinDLL("user32", use_last_error=True)  # type: ignore[attr-defined]
        self._vk = {k.name: win32_virtual_key(k, self.user32.MapVirtualKeyW) for k in keys}

    def held(self) -> set[str]:
        get = self.user32.GetAsyncKeyState
        return {n for n, vk in self._vk.items() if vk and get(vk) & 0x8000}

    def close(self) -> None:
        pass


class KeyReader:
    """The keyboard: `read()` is the mapping's action for the keys held now (the most keys win)."""

    kind = "keyboard"

    def __init__(self, mapping: KeyMapping, state: Any):
        self.mapping, self.state = mapping, state
        self.last: tuple[str, ...] = ()

    def read(self) -> int:
        held = self.state.held()
        self.last = tuple(sorted(held))
        return self.mapping.held_action(held)

    def close(self) -> None:
        self.state.close()


def make_input_reader(cfg, display: str | None = None, state: Any = None):
    """The reader of `cfg.backend`'s inputs (an InputsConfig); `state` replaces the device (tests)."""
    if cfg.backend == "keyboard":
        mapping = _mapping(cfg)  # unknown key names fail here, before any device opens
        keys = list({k.name: k for i in range(len(mapping)) for k in mapping.keys(i)}.values())
        if state is None:
            state = Win32KeyState(keys) if sys.platform == "win32" else X11KeyState(keys, display)
        return KeyReader(mapping, state)
    if cfg.backend == "gamepad":
        mapping = _mapping(cfg)
        return PadReader(mapping, dead_zones_from_config(cfg.dead_zones), state or open_pad_state())
    raise ConfigError(
        f"recording a person reads inputs.backend=keyboard or gamepad (got {cfg.backend!r}); "
        "set inputs.backend and its mapping (inputs.keys or inputs.gamepad_actions/gamepad_heads)"
    )
