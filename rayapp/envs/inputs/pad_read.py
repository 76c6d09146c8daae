"""Reading a person's gamepad: the pad's state -> the action of a `GamepadMapping` it is nearest to.

`pad_action` is pure: the device state (sticks as deflections in [-1, 1] with +y up, triggers in
[0, 1], buttons held) is first read the way the game reads it (its dead zones: `DeadZone.reading`),
then each head takes its choice nearest to that reading: the squared distance over the axes the
head drives plus one per button (of those the head uses) held where the choice does not hold it or
not held where it does; ties go to the first choice. So a full left stick is `LEFT`, a stick resting
inside the dead zone is the choice without a deflection, and buttons no action uses are ignored.

The devices: evdev on Linux (python-libevdev, the first joystick under /dev/input, or
`RAYAPP_GAMEPAD_DEVICE`), XInput on Windows (XInputGetState, pad 0). Both are read as state at the
moment the recorder samples a frame.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
from typing import Any

from rayapp.envs.inputs.deadzone import DEFAULT_DEAD_ZONES, DeadZone
from rayapp.envs.inputs.gamepad_map import GamepadMapping, GamepadState
from rayapp.errors import InputDeviceError

__all__ = ["pad_action", "game_reading", "PadReader", "open_pad_state", "XINPUT_BUTTONS", "EVDEV_BUTTONS"]

_STICKS = {"left_stick": ("left_x", "left_y"), "right_stick": ("right_x", "right_y")}


def game_reading(state: GamepadState, dead_zones: dict[str, DeadZone] | None = None) -> GamepadState:
    """What the game reads from a device state: every stick and trigger through its dead zone."""
    dz = {**DEFAULT_DEAD_ZONES, **(dead_zones or {})}
    axes: dict[str, float] = {}
    for stick, (ax, ay) in _STICKS.items():
        axes[ax], axes[ay] = dz[stick].reading(state.axis(ax), state.axis(ay))
    for trig in ("left_trigger", "right_trigger"):
        axes[trig] = dz[trig].reading_1d(state.axis(trig))
    return GamepadState(state.buttons, axes)


def _nearest(choices: list[GamepadState], read: GamepadState) -> int:
    axes = {a for c in choices for a in c.axes}
    buttons = {b for c in choices for b in c.buttons}
    held = read.buttons & buttons

    def dist(c: GamepadState) -> float:
        return sum((read.axis(a) - c.axis(a)) ** 2 for a in axes) + len(held ^ c.buttons)

    return min(range(len(choices)), key=lambda i: (dist(choices[i]), i))


def pad_action(mapping: GamepadMapping, state: GamepadState, dead_zones: dict[str, DeadZone] | None = None):
    """The action `state` plays: an int for a discrete mapping, one index per head when factorised."""
    read = game_reading(state, dead_zones)
    idx = [_nearest(choices, read) for choices in mapping.heads.values()]
    return idx[0] if mapping.discrete else idx


class PadReader:
    """The gamepad: `read()` is the mapping's action for the pad's state now."""

    kind = "gamepad"

    def __init__(self, mapping: GamepadMapping, dead_zones: dict[str, DeadZone], state: Any):
        self.mapping, self.dead_zones, self.state = mapping, dead_zones, state
        self.last: tuple[str, ...] = ()

    def read(self):
        s = self.state.read()
        self.last = tuple(sorted(s.buttons))
        return pad_action(self.mapping, s, self.dead_zones)

    def close(self) -> None:
        self.state.close()


# ---- devices -------------------------------------------------------------------------------------
XINPUT_BUTTONS = {
    0x0001: "dpad_up", 0x0002: "dpad_down", 0x0004: "dpad_left", 0x0008: "dpad_right", 0x0010: "start",
    0x0020: "back", 0x0040: "ls", 0x0080: "rs", 0x0100: "lb", 0x0200: "rb", 0x1000: "a", 0x2000: "b",
    0x4000: "x", 0x8000: "y",
}  # fmt: skip
EVDEV_BUTTONS = {
    "BTN_SOUTH": "a", "BTN_EAST": "b", "BTN_NORTH": "x", "BTN_WEST": "y", "BTN_TL": "lb", "BTN_TR": "rb",
    "BTN_SELECT": "back", "BTN_START": "start", "BTN_MODE": "guide", "BTN_THUMBL": "ls", "BTN_THUMBR": "rs",
}  # fmt: skip
# evdev axis -> (our axis, sign): evdev's +y is down, ours up
EVDEV_AXES = {"ABS_X": ("left_x", 1), "ABS_Y": ("left_y", -1), "ABS_RX": ("right_x", 1), "ABS_RY": ("right_y", -1),
              "ABS_Z": ("left_trigger", 1), "ABS_RZ": ("right_trigger", 1)}  # fmt: skip


def xinput_state(buttons: int, lt: int, rt: int, lx: int, ly: int, rx: int, ry: int) -> GamepadState:
    """An XINPUT_GAMEPAD report as a GamepadState (sticks / 32767, triggers / 255)."""
    held = frozenset(n for bit, n in XINPUT_BUTTONS.items() if buttons & bit)
    s = lambda v: max(-1.0, v / 32767)  # noqa: E731
    axes = {"left_x": s(lx), "left_y": s(ly), "right_x": s(rx), "right_y": s(ry),
            "left_trigger": lt / 255, "right_trigger": rt / 255}  # fmt: skip
    return GamepadState(held, axes)


class _XInputGamepad(ctypes.Structure):
    _fields_ = [("wButtons", ctypes.c_uint16), ("bLeftTrigger", ctypes.c_uint8), ("bRightTrigger", ctypes.c_uint8),
                ("sThumbLX", ctypes.c_int16), ("sThumbLY", ctypes.c_int16), ("sThumbRX", ctypes.c_int16),
                ("sThumbRY", ctypes.c_int16)]  # fmt: skip


class _XInputState(ctypes.Structure):
    _fields_ = [("dwPacketNumber", ctypes.c_uint32), ("Gamepad", _XInputGamepad)]


class XInputPad:
    def __init__(self, index: int = 0):
        try:
            self.dll = ctypes.WinDLL("xinput1_4")  # type: ignore[attr-defined]
        except OSError as e:
            raise InputDeviceError(f"cannot load XInput (xinput1_4.dll): {e}") from None
        self.index = index
        self.read()

    def read(self) -> GamepadState:
        st = _XInputState()
        if self.dll.XInputGetState(self.index, ctypes.byref(st)) != 0:
            raise InputDeviceError(f"no XInput gamepad {self.index} connected")
        g = st.Gamepad
        return xinput_state(
            g.wButtons, g.bLeftTrigger, g.bRightTrigger, g.sThumbLX, g.sThumbLY, g.sThumbRX, g.sThumbRY
        )

    def close(self) -> None:
        pass


class EvdevPad:
    """A joystick under /dev/input read with python-libevdev (events drained at every read)."""

    def __init__(self, path: str):
        try:
            import libevdev
        except ImportError:
            raise InputDeviceError(
                "reading a gamepad on Linux needs python-libevdev: pip install libevdev"
            ) from None
        self.ev = libevdev
        try:
            self.fd = open(path, "rb")
            os.set_blocking(self.fd.fileno(), False)
            self.dev = libevdev.Device(self.fd)
        except OSError as e:
            raise InputDeviceError(
                f"cannot open the gamepad {path}: {e} (is it readable by this user?)"
            ) from None

    def _norm(self, code) -> float:
        info = self.dev.absinfo[code]
        if info is None:
            return 0.0
        lo, hi, v = info.minimum, info.maximum, info.value
        if lo >= 0:  # a trigger 0..max
            return (v - lo) / max(1, hi - lo)
        return max(-1.0, min(1.0, (2 * (v - lo) / max(1, hi - lo)) - 1.0))

    def read(self) -> GamepadState:
        ev = self.ev
        try:
            for _ in self.dev.events():
                pass
        except ev.EventsDroppedException:
            for _ in self.dev.sync():
                pass
        except BlockingIOError:
            pass
        held = {n for code, n in EVDEV_BUTTONS.items() if self.dev.value[getattr(ev.EV_KEY, code)]}
        axes = {}
        for code, (name, sign) in EVDEV_AXES.items():
            c = getattr(ev.EV_ABS, code)
            if self.dev.has(c):
                axes[name] = sign * self._norm(c)
        for code, (neg, pos) in (
            ("ABS_HAT0X", ("dpad_left", "dpad_right")),
            ("ABS_HAT0Y", ("dpad_up", "dpad_down")),
        ):
            c = getattr(ev.EV_ABS, code)
            v = self.dev.value[c] if self.dev.has(c) else 0
            if v:
                held.add(neg if v < 0 else pos)
        return GamepadState(frozenset(held), axes)

    def close(self) -> None:
        self.fd.close()


def open_pad_state():
    """The person's pad: XInput pad 0 on Windows; on Linux RAYAPP_GAMEPAD_DEVICE or the first
    /dev/input/by-id/*-event-joystick."""
    if sys.platform == "win32":
        return XInputPad(0)
    path = os.environ.get("RAYAPP_GAMEPAD_DEVICE") or next(
        iter(sorted(glob.glob("/dev/input/by-id/*-event-joystick"))), ""
    )
    if not path:
        raise InputDeviceError(
            "no gamepad found (/dev/input/by-id/*-event-joystick); set RAYAPP_GAMEPAD_DEVICE=/dev/input/eventN"
        )
    return EvdevPad(path)
