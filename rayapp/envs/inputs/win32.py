"""Keyboard and mouse events on Windows through `SendInput` (user32, loaded only on Windows).

Keys go by scan code (KEYEVENTF_SCANCODE): many DirectX games read scan codes and ignore virtual-key
events. The INPUT records are built here with fixed-width fields laid out as the Windows x64 ABI
lays them out, so everything up to the `SendInput` call itself (scan codes, flags, absolute
coordinates, the records' bytes) is tested on every platform; only `SendInputSink` needs Windows.
"""

from __future__ import annotations

import ctypes
import sys
from ctypes import c_int32, c_size_t, c_uint16, c_uint32

from rayapp.envs.inputs.keys import Key, win32_key_flags
from rayapp.envs.inputs.mouse_grid import win32_absolute
from rayapp.errors import InputDeviceError

__all__ = ["SendInputSink", "INPUT", "key_input", "mouse_input", "MOUSE_FLAGS", "MOVE_FLAGS"]

INPUT_MOUSE, INPUT_KEYBOARD = 0, 1
# button -> (down flags, up flags, mouseData)
MOUSE_FLAGS = {
    "left": (0x0002, 0x0004, 0),
    "right": (0x0008, 0x0010, 0),
    "middle": (0x0020, 0x0040, 0),
    "scroll_up": (0x0800, 0, 120),  # MOUSEEVENTF_WHEEL, one notch (WHEEL_DELTA) away from the user
    "scroll_down": (0x0800, 0, -120),
}
MOVE_FLAGS = 0x0001 | 0x8000 | 0x4000  # MOVE | ABSOLUTE | VIRTUALDESK


class KEYBDINPUT(ctypes.Structure):
    _fields_ = [("wVk", c_uint16), ("wScan", c_uint16), ("dwFlags", c_uint32), ("time", c_uint32),
                ("dwExtraInfo", c_size_t)]  # fmt: skip


class MOUSEINPUT(ctypes.Structure):
    _fields_ = [("dx", c_int32), ("dy", c_int32), ("mouseData", c_uint32), ("dwFlags", c_uint32),
                ("time", c_uint32), ("dwExtraInfo", c_size_t)]  # fmt: skip


class HARDWAREINPUT(ctypes.Structure):
    _fields_ = [("uMsg", c_uint32), ("wParamL", c_uint16), ("wParamH", c_uint16)]


class _INPUT_UNION(ctypes.Union):
    _fields_ = [("ki", KEYBDINPUT), ("mi", MOUSEINPUT), ("hi", HARDWAREINPUT)]


class INPUT(ctypes.Structure):
    _fields_ = [("type", c_uint32), ("u", _INPUT_UNION)]


def key_input(k: Key, down: bool) -> INPUT:
    inp = INPUT(type=INPUT_KEYBOARD)
    inp.u.ki = KEYBDINPUT(wVk=0, wScan=k.scan, dwFlags=win32_key_flags(k, down), time=0, dwExtraInfo=0)
    return inp


def mouse_input(dx: int, dy: int, flags: int, data: int = 0) -> INPUT:
    inp = INPUT(type=INPUT_MOUSE)
    inp.u.mi = MOUSEINPUT(dx=dx, dy=dy, mouseData=data & 0xFFFFFFFF, dwFlags=flags, time=0, dwExtraInfo=0)
    return inp


class SendInputSink:
    def __init__(self) -> None:
        if sys.platform != "win32":
            raise InputDeviceError("SendInput is the Windows input path; on Linux use the X11 (XTEST) one")
        self._user32 = ctypes.WinDLL("user32", use_last_error=True)
        u = self._user32
        # the virtual desktop (all monitors): SM_XVIRTUALSCREEN, SM_YVIRTUALSCREEN, SM_CXVIRTUALSCREEN, ...
        self.screen = (u.GetSystemMetrics(76), u.GetSystemMetrics(77), u.GetSystemMetrics(78), u.GetSystemMetrics(79))
        self._pending: list[INPUT] = []

    def prepare(self, k: Key) -> None:
        pass  # a scan code needs no lookup

    def key(self, k: Key, down: bool) -> None:
        self._pending.append(key_input(k, down))

    def move(self, x: int, y: int) -> None:
        self._pending.append(mouse_input(*win32_absolute(x, y, self.screen), MOVE_FLAGS))

    def button(self, name: str, down: bool) -> None:
        down_flags, up_flags, data = MOUSE_FLAGS[name]
        if down or up_flags:  # a wheel notch has no "up"
            self._pending.append(mouse_input(0, 0, down_flags if down else up_flags, data if down else 0))

    def flush(self) -> None:
        if not self._pending:
            return
        n = len(self._pending)
        arr = (INPUT * n)(*self._pending)
        self._pending = []
        sent = self._user32.SendInput(n, arr, ctypes.sizeof(INPUT))
        if sent != n:
            raise InputDeviceError(
                f"SendInput sent {sent} of {n} events (error {ctypes.get_last_error()}): "
                "another program (UAC, a game's anti-cheat) may block synthesised input"
            )

    def close(self) -> None:
        self._pending = []
