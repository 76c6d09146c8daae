"""Reading a person's inputs (for recording a human teacher): which keys are held now, where the
pointer is and its buttons, which pad state, and the action of the configured mapping that they
play. Nothing is ever sent or pressed.

The keyboard is read as state, at the moment the recorder samples a frame: the X server's key map
(X11 `QueryKeymap`, python-xlib; it holds what real keyboards and XTEST have pressed, whatever
window has the focus) plus, through the RECORD extension, the keys pressed since the last sample
(a tap shorter than a frame counts once) on Linux; `GetAsyncKeyState` on Windows (a tap shorter
than a frame is not seen there). A held key is seen at the next sample, so the recorded action
lags the person's by at most one frame.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

from rayapp.envs.inputs.factory import _mapping
from rayapp.envs.inputs.gamepad import dead_zones_from_config
from rayapp.envs.inputs.keys import Key, KeyMapping
from rayapp.envs.inputs.mouse_grid import MouseGrid
from rayapp.envs.inputs.pad_read import PadReader, open_pad_state
from rayapp.envs.inputs.x11 import open_display
from rayapp.envs.inputs.x11_record import KeyPressLatch
from rayapp.errors import ConfigError, InputDeviceError

__all__ = [
    "KeyReader",
    "MouseReader",
    "X11KeyState",
    "X11Pointer",
    "Win32KeyState",
    "Win32Pointer",
    "make_input_reader",
    "mouse_command",
    "win32_virtual_key",
]

MAPVK_VSC_TO_VK_EX = 3


class X11KeyState:
    """The X server's held keys (one QueryKeymap round trip per read) and, with `taps` (the RECORD
    extension, x11_record.py), the keys pressed since the last read even if already released."""

    def __init__(self, keys: list[Key], display: str | None = None, taps: bool = True):
        from Xlib import XK

        self.display = open_display(display)
        self._codes: dict[int, str] = {}
        for k in keys:
            code = self.display.keysym_to_keycode(XK.string_to_keysym(k.keysym))
            if not code:
                self.display.close()
                raise InputDeviceError(f"key {k.name!r} ({k.keysym}) is not on this X server's keyboard map")
            self._codes[code] = k.name
        self.latch = KeyPressLatch(self._codes, display) if taps else None
        if self.latch is not None and not self.latch.start():
            self.latch = None

    def held(self) -> set[str]:
        now = self.held_now()
        return now | self.latch.take() if self.latch is not None else now

    def held_now(self) -> set[str]:
        """The keys down at this moment (the key map only, no taps)."""
        keymap = self.display.query_keymap()
        return {n for c, n in self._codes.items() if keymap[c >> 3] >> (c & 7) & 1}

    def close(self) -> None:
        try:
            if self.latch is not None:
                self.latch.close()
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


# ---- the mouse ---------------------------------------------------------------------------------
def mouse_command(commands: list[str], buttons: set[str], before: set[str], moved: bool) -> int:
    """The command (index into `commands`) of a pointer sample: a button held is its `_hold` command
    where the mapping has one (else its `_click`); a button just pressed prefers `_click`; no button:
    `move` when the pointer moved since the last sample, else `none`. The first listed that exists."""
    wants: list[str] = []
    for b in ("left", "right", "middle"):
        if b in buttons:
            wants += [f"{b}_click", f"{b}_hold"] if b not in before else [f"{b}_hold", f"{b}_click"]
    wants += ["move", "none"] if moved else ["none", "move"]
    for w in wants:
        if w in commands:
            return commands.index(w)
    return 0


class X11Pointer:
    """The pointer's root position and buttons (one QueryPointer round trip per read)."""

    MASKS = {"left": 1 << 8, "middle": 1 << 9, "right": 1 << 10}  # Button1Mask..Button3Mask

    def __init__(self, display: str | None = None):
        self.display = open_display(display)
        self.root = self.display.screen().root

    def read(self) -> tuple[int, int, set[str]]:
        p = self.root.query_pointer()
        return int(p.root_x), int(p.root_y), {b for b, m in self.MASKS.items() if p.mask & m}

    def close(self) -> None:
        try:
            self.display.close()
        except Exception:
            pass


class Win32Pointer:
    """GetCursorPos and the mouse buttons' GetAsyncKeyState (Windows only)."""

    VK = {"left": 0x01, "right": 0x02, "middle": 0x04}

    def __init__(self):
        if sys.platform != "win32":
            raise InputDeviceError("Win32Pointer needs Windows")
        self.user32 = ctypes.WinDLL("user32", use_last_error=True)  # type: ignore[attr-defined]

    def read(self) -> tuple[int, int, set[str]]:
        pt = (ctypes.c_long * 2)()
        self.user32.GetCursorPos(pt)
        get = self.user32.GetAsyncKeyState
        return int(pt[0]), int(pt[1]), {b for b, vk in self.VK.items() if get(vk) & 0x8000}

    def close(self) -> None:
        pass


class MouseReader:
    """The mouse: `read()` is (command, x cell, y cell) over the capture region `region()` gives."""

    kind = "mouse"

    def __init__(self, grid: MouseGrid, state: Any, region=None):
        self.mapping, self.state, self.region = grid, state, region
        self._before: set[str] = set()
        self._pos: tuple[int, int] | None = None
        self.last: tuple[str, ...] = ()

    def read(self) -> list[int]:
        x, y, buttons = self.state.read()
        if self.region is not None and tuple(self.region()) != self.mapping.region:
            self.mapping = self.mapping.with_region(tuple(self.region()))  # the window moved
        names = [c.name for c in self.mapping.commands]
        c = mouse_command(names, buttons, self._before, self._pos is not None and (x, y) != self._pos)
        self._before, self._pos, self.last = set(buttons), (x, y), tuple(sorted(buttons))
        return [c, *self.mapping.cell(x, y)]

    def close(self) -> None:
        self.state.close()


def make_input_reader(cfg, display: str | None = None, state: Any = None, region=None):
    """The reader of `cfg.backend`'s inputs (an InputsConfig); `state` replaces the device (tests);
    `region()` is the capture region (left, top, width, height) the mouse grid covers."""
    if cfg.backend == "mouse":
        if len(cfg.mouse_grid) != 2:
            raise ConfigError(f"inputs.mouse_grid must be [cols, rows], got {cfg.mouse_grid}")
        grid = MouseGrid(cfg.mouse_commands, *cfg.mouse_grid, (0, 0, 1, 1))  # the region: at every read
        if state is None:
            state = Win32Pointer() if sys.platform == "win32" else X11Pointer(display)
        return MouseReader(grid, state, region)
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
        f"recording a person reads inputs.backend=keyboard, mouse or gamepad (got {cfg.backend!r}); "
        "set inputs.backend and its mapping (inputs.keys, inputs.mouse_*, inputs.gamepad_actions/gamepad_heads)"
    )
