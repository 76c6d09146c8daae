"""The gamepad backend: a virtual Xbox 360 or DualShock 4 pad through `vgamepad` (imported lazily).

vgamepad keeps the pad's state until it is changed and sends nothing before `update()`, so every
apply writes the whole state (reset, then the action's buttons and axes, then one update) and every
way out (release_all, close, exceptions, atexit) sends the neutral report. Linux needs libevdev2 and
a writable /dev/uinput; Windows needs the ViGEmBus driver.
"""

from __future__ import annotations

import time
from typing import Any

from rayapp.envs.inputs.base import InputBackend
from rayapp.envs.inputs.deadzone import AXES, DEFAULT_DEAD_ZONES, DeadZone
from rayapp.envs.inputs.gamepad_map import BUTTONS, DS4_DPAD, GamepadMapping, GamepadState
from rayapp.errors import ConfigError, InputDeviceError

__all__ = ["GamepadBackend", "open_gamepad", "dead_zones_from_config", "STICK_SCALE"]

STICK_SCALE = {"x360": 32767, "ds4": 127}  # device units of a full stick deflection
TRIGGER_SCALE = 255


def dead_zones_from_config(overrides: dict | None, where: str = "inputs.dead_zones") -> dict[str, DeadZone]:
    """XInput's default dead zones with `overrides` ({left_stick: {inner: 0.1}, ...}) on top."""
    out = dict(DEFAULT_DEAD_ZONES)
    for axis, value in (overrides or {}).items():
        if axis not in AXES:
            raise ConfigError(f"{where}.{axis}: unknown axis; dead zones are set for {', '.join(AXES)}")
        out[axis] = DeadZone.from_config(value, DEFAULT_DEAD_ZONES[axis], f"{where}.{axis}")
    return out


def _vgamepad():
    try:
        import vgamepad
    except ImportError:
        raise InputDeviceError("the gamepad backend needs vgamepad: pip install 'rayapp[gamepc]'") from None
    except OSError as e:  # libevdev's shared library missing (Linux)
        raise InputDeviceError(f"vgamepad cannot load libevdev ({e}): apt-get install libevdev2") from None
    return vgamepad


def open_gamepad(device: str):
    """A real virtual pad (VX360Gamepad / VDS4Gamepad), or an InputDeviceError saying what is missing."""
    vg = _vgamepad()
    cls = vg.VX360Gamepad if device == "x360" else vg.VDS4Gamepad
    try:
        return cls()
    except OSError as e:
        raise InputDeviceError(
            f"cannot create a virtual {device} gamepad: {e} (Linux: load the uinput module and make "
            "/dev/uinput writable; Windows: install the ViGEmBus driver)"
        ) from None


class GamepadBackend(InputBackend):
    """`apply(action)` sets the pad to the state the mapping gives (dead zones applied) and holds it."""

    kind = "gamepad"

    def __init__(self, mapping: GamepadMapping, dead_zones: dict[str, DeadZone] | None = None,
                 device_factory: Any = None):  # fmt: skip
        self.mapping = mapping
        self.dead_zones = {**DEFAULT_DEAD_ZONES, **(dead_zones or {})}
        vg = _vgamepad()
        if mapping.device == "x360":
            self._buttons = {n: getattr(vg.XUSB_BUTTON, e) for n, e in BUTTONS["x360"].items()}
        else:
            self._buttons = {
                n: getattr(vg.DS4_BUTTONS, e)
                for n, e in BUTTONS["ds4"].items()
                if e.startswith("DS4_BUTTON_")
            }
            self._special = {n: getattr(vg.DS4_SPECIAL_BUTTONS, e) for n, e in BUTTONS["ds4"].items()
                             if e.startswith("DS4_SPECIAL")}  # fmt: skip
            self._dpad = {k: getattr(vg.DS4_DPAD_DIRECTIONS, v) for k, v in DS4_DPAD.items()}
        self.pad = (device_factory or open_gamepad)(mapping.device)
        self.state = GamepadState()
        self.update_ms: float = 0.0  # the last update()'s time (vgamepad issue #39: stalls of ~50 ms)
        super().__init__()

    def device_values(self, state: GamepadState) -> dict[str, int]:
        """The integer report values a state becomes (dead zones applied; device conventions: the
        X360 has +y up and 0 at rest, the DS4 +y down and 128 at rest)."""
        scale = STICK_SCALE[self.mapping.device]
        out = {}
        for stick, (ax, ay) in (
            ("left_stick", ("left_x", "left_y")),
            ("right_stick", ("right_x", "right_y")),
        ):
            qx, qy = self.dead_zones[stick].quantise(state.axis(ax), state.axis(ay), scale)
            if self.mapping.device == "ds4":
                qx, qy = 128 + qx, 128 - qy
            out[ax], out[ay] = qx, qy
        for trig in ("left_trigger", "right_trigger"):
            out[trig] = self.dead_zones[trig].quantise_1d(state.axis(trig), TRIGGER_SCALE)
        return out

    def _write(self, state: GamepadState) -> None:
        pad = self.pad
        pad.reset()
        v = self.device_values(state)
        for b in state.buttons:
            if b in self._buttons:
                pad.press_button(self._buttons[b])
            elif self.mapping.device == "ds4" and b in self._special:
                pad.press_special_button(self._special[b])
        if self.mapping.device == "ds4":
            pad.directional_pad(self._dpad[state.dpad()])
        pad.left_joystick(v["left_x"], v["left_y"])
        pad.right_joystick(v["right_x"], v["right_y"])
        pad.left_trigger(v["left_trigger"])
        pad.right_trigger(v["right_trigger"])
        t = time.perf_counter()
        pad.update()
        self.update_ms = (time.perf_counter() - t) * 1000

    def _apply(self, action) -> None:
        state = self.mapping.state(action)
        self.state = state  # held before sending: a failure releases it
        self._write(state)

    def _release_all(self) -> None:
        self.state = GamepadState()
        self.pad.reset()
        self.pad.update()

    def pressed(self) -> tuple[str, ...]:
        axes = [a for a, v in self.state.axes.items() if v != 0.0]
        return tuple(sorted(self.state.buttons)) + tuple(sorted(axes))

    def describe(self) -> str:
        """Buttons held and every deflected axis as the device value sent (dead zones applied)."""
        v = self.device_values(self.state)
        axes = [f"{a}={v[a]}" for a, x in sorted(self.state.axes.items()) if x != 0.0 and a in v]
        return " ".join([*sorted(self.state.buttons), *axes]) or "-"

    def _close(self) -> None:
        self.pad = None  # vgamepad's own __del__ closes the device
