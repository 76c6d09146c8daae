"""Keyboard and mouse events on Windows through `SendInput` (ctypes, loaded only on Windows).

Keys go by scan code (KEYEVENTF_SCANCODE): many DirectX games read scan codes and ignore virtual-key
events. The pure parts (scan codes, flags, absolute coordinates) live in keys.py and mouse_grid.py
and are tested on every platform; this module cannot run off Windows.
"""

from __future__ import annotations

import ctypes
import sys
from ctypes import wintypes

from rayapp.envs.inputs.keys import Key, win32_key_flags
from rayapp.envs.inputs.mouse_grid import win32_absolute
from rayapp.errors import InputDeviceError

__all__ = ["SendInputSink", "MOUSE_FLAGS"]

# button -> (down flags, up flags, mouseData)
MOUSE_FLAGS = {
    "left": (0x0002, 0x0004, 0),
    "right": (0x0008, 0x0010, 0),
    "middle": (0x0020, 0x0040, 0),
    "scroll_up": (0x0800, 0, 120),  # MOUSEEVENTF_WHEEL, one notch (WHEEL_DELTA) away from the user
    "scroll_down": (0x0800, 0, -120),
}
MOVE_FLAGS = 0x0001 | 0x8000 | 0x4000  # MOVE | ABSOLUTE | VIRTUALDESK


class SendInputSink:
    def __init__(self) -> None:
        if sys.platform != "win32":
            raise InputDeviceError("SendInput is the Windows input path; on Linux use the X11 (XTEST) one")
        ULONG_PTR = ctypes.c_size_t

        class KEYBDINPUT(ctypes.Structure):
            _fields_ = [("wVk", wintypes.WORD), ("wScan", wintypes.WORD), ("dwFlags", wintypes.DWORD),
                        ("time", wintypes.DWORD), ("dwExtraInfo", ULONG_PTR)]  # fmt: skip

        class MOUSEINPUT(ctypes.Structure):
            _fields_ = [("dx", wintypes.LONG), ("dy", wintypes.LONG), ("mouseData", wintypes.DWORD),
                        ("dwFlags", wintypes.DWORD), ("time", wintypes.DWORD), ("dwExtraInfo", ULONG_PTR)]  # fmt: skip

        class _U(ctypes.Union):
            _fields_ = [("ki", KEYBDINPUT), ("mi", MOUSEINPUT), ("pad", ctypes.c_byte * 32)]

        class INPUT(ctypes.Structure):
            _fields_ = [("type", wintypes.DWORD), ("u", _U)]

        self._ct, self._INPUT, self._KI, self._MI = ctypes, INPUT, KEYBDINPUT, MOUSEINPUT
        self._user32 = ctypes.WinDLL("user32", use_last_error=True)
        u = self._user32
        # the virtual desktop (all monitors): SM_XVIRTUALSCREEN, SM_YVIRTUALSCREEN, SM_CXVIRTUALSCREEN, ...
        self.screen = (
            u.GetSystemMetrics(76),
            u.GetSystemMetrics(77),
            u.GetSystemMetrics(78),
            u.GetSystemMetrics(79),
        )
        self._pending: list = []

    def prepare(self, k: Key) -> None:
        pass  # a scan code needs no lookup

    def key(self, k: Key, down: bool) -> None:
        ki = self._KI(wVk=0, wScan=k.scan, dwFlags=win32_key_flags(k, down), time=0, dwExtraInfo=0)
        inp = self._INPUT(type=1)  # INPUT_KEYBOARD
        inp.u.ki = ki
        self._pending.append(inp)

    def _mouse(self, dx: int, dy: int, flags: int, data: int = 0) -> None:
        inp = self._INPUT(type=0)  # INPUT_MOUSE
        inp.u.mi = self._MI(dx=dx, dy=dy, mouseData=data & 0xFFFFFFFF, dwFlags=flags, time=0, dwExtraInfo=0)
        self._pending.append(inp)

    def move(self, x: int, y: int) -> None:
        self._mouse(*win32_absolute(x, y, self.screen), MOVE_FLAGS)

    def button(self, name: str, down: bool) -> None:
        down_flags, up_flags, data = MOUSE_FLAGS[name]
        if down or up_flags:
            self._mouse(0, 0, down_flags if down else up_flags, data if down else 0)

    def flush(self) -> None:
        if not self._pending:
            return
        n = len(self._pending)
        arr = (self._INPUT * n)(*self._pending)
        self._pending = []
        sent = self._user32.SendInput(n, arr, self._ct.sizeof(self._INPUT))
        if sent != n:
            raise InputDeviceError(
                f"SendInput sent {sent} of {n} events (error {self._ct.get_last_error()}): "
                "another program (UAC, a game's anti-cheat) may block synthesised input"
            )

    def close(self) -> None:
        self._pending = []
