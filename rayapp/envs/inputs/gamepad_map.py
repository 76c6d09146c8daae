"""`GamepadMapping`: discrete or factorised actions -> buttons, stick deflections and trigger levels
(pure Python; the device is in gamepad.py).

Config, discrete (one head, actions numbered in order):
    {NOOP: {}, ACCEL: {right_trigger: 1.0}, LEFT: {left_stick: [-1, 0]}, JUMP: {buttons: [a]}}
or factorised (one head per key, an action is one index per head, e.g. from MultiDiscrete(nvec)):
    {steer: [{left_x: -1}, {left_x: -0.3}, {}, {left_x: 0.3}, {left_x: 1}],
     pedal: [{}, {right_trigger: 1}, {left_trigger: 1}], fire: [{}, {buttons: [a]}]}
Stick values are policy outputs in [-1, 1] with +y up (as XInput); dead zones are applied on top.
Two heads may not drive the same axis.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from rayapp.errors import ConfigError

__all__ = ["GamepadState", "GamepadMapping", "BUTTONS", "DS4_DPAD"]

# canonical button names per device -> the vgamepad enum member (XUSB_BUTTON / DS4_BUTTONS /
# DS4_SPECIAL_BUTTONS); dpad_* on the DS4 is its hat (DS4_DPAD)
BUTTONS: dict[str, dict[str, str]] = {
    "x360": {
        "a": "XUSB_GAMEPAD_A", "b": "XUSB_GAMEPAD_B", "x": "XUSB_GAMEPAD_X", "y": "XUSB_GAMEPAD_Y",
        "lb": "XUSB_GAMEPAD_LEFT_SHOULDER", "rb": "XUSB_GAMEPAD_RIGHT_SHOULDER",
        "back": "XUSB_GAMEPAD_BACK", "start": "XUSB_GAMEPAD_START", "guide": "XUSB_GAMEPAD_GUIDE",
        "ls": "XUSB_GAMEPAD_LEFT_THUMB", "rs": "XUSB_GAMEPAD_RIGHT_THUMB",
        "dpad_up": "XUSB_GAMEPAD_DPAD_UP", "dpad_down": "XUSB_GAMEPAD_DPAD_DOWN",
        "dpad_left": "XUSB_GAMEPAD_DPAD_LEFT", "dpad_right": "XUSB_GAMEPAD_DPAD_RIGHT",
    },
    "ds4": {
        "cross": "DS4_BUTTON_CROSS", "circle": "DS4_BUTTON_CIRCLE", "square": "DS4_BUTTON_SQUARE",
        "triangle": "DS4_BUTTON_TRIANGLE", "l1": "DS4_BUTTON_SHOULDER_LEFT", "r1": "DS4_BUTTON_SHOULDER_RIGHT",
        "l2": "DS4_BUTTON_TRIGGER_LEFT", "r2": "DS4_BUTTON_TRIGGER_RIGHT", "share": "DS4_BUTTON_SHARE",
        "options": "DS4_BUTTON_OPTIONS", "l3": "DS4_BUTTON_THUMB_LEFT", "r3": "DS4_BUTTON_THUMB_RIGHT",
        "ps": "DS4_SPECIAL_BUTTON_PS", "touchpad": "DS4_SPECIAL_BUTTON_TOUCHPAD",
        "dpad_up": "hat", "dpad_down": "hat", "dpad_left": "hat", "dpad_right": "hat",
    },
}  # fmt: skip
# the other pad's names, by position (Xbox X is the left face button = PlayStation square)
_ALIASES = {
    "x360": {"cross": "a", "circle": "b", "square": "x", "triangle": "y", "l1": "lb", "r1": "rb",
             "share": "back", "options": "start", "ps": "guide", "l3": "ls", "r3": "rs"},
    "ds4": {"a": "cross", "b": "circle", "x": "square", "y": "triangle", "lb": "l1", "rb": "r1",
            "back": "share", "start": "options", "guide": "ps", "ls": "l3", "rs": "r3"},
}  # fmt: skip
# DS4 hat: (right - left, down - up) -> DS4_DPAD_DIRECTIONS member
DS4_DPAD = {
    (0, 0): "DS4_BUTTON_DPAD_NONE", (0, -1): "DS4_BUTTON_DPAD_NORTH", (1, -1): "DS4_BUTTON_DPAD_NORTHEAST",
    (1, 0): "DS4_BUTTON_DPAD_EAST", (1, 1): "DS4_BUTTON_DPAD_SOUTHEAST", (0, 1): "DS4_BUTTON_DPAD_SOUTH",
    (-1, 1): "DS4_BUTTON_DPAD_SOUTHWEST", (-1, 0): "DS4_BUTTON_DPAD_WEST", (-1, -1): "DS4_BUTTON_DPAD_NORTHWEST",
}  # fmt: skip
SINGLE_AXES = ("left_x", "left_y", "right_x", "right_y", "left_trigger", "right_trigger")
STICKS = {"left_stick": ("left_x", "left_y"), "right_stick": ("right_x", "right_y")}


@dataclass(frozen=True)
class GamepadState:
    """Buttons held and axis outputs (sticks in [-1, 1], +y up; triggers in [0, 1]); axes not set are neutral."""

    buttons: frozenset[str] = frozenset()
    axes: dict[str, float] = field(default_factory=dict)

    def axis(self, name: str) -> float:
        return self.axes.get(name, 0.0)

    def dpad(self) -> tuple[int, int]:
        b = self.buttons
        return int("dpad_right" in b) - int("dpad_left" in b), int("dpad_down" in b) - int("dpad_up" in b)


def _button(device: str, name: str, where: str) -> str:
    n = str(name).strip().lower()
    n = _ALIASES[device].get(n, n)
    if n in BUTTONS[device]:
        return n
    close = difflib.get_close_matches(n, [*BUTTONS[device], *_ALIASES[device]], n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(
        f"{where}: unknown {device} button {name!r}{hint} (buttons: {', '.join(BUTTONS[device])})"
    )


def _state(device: str, spec, where: str) -> GamepadState:
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise ConfigError(
            f"{where}: expects a mapping like {{buttons: [a], left_stick: [-1, 0]}}, got {spec!r}"
        )
    buttons: set[str] = set()
    axes: dict[str, float] = {}
    for key, value in spec.items():
        k = f"{where}.{key}"
        if key == "buttons":
            names = [value] if isinstance(value, str) else value
            if not isinstance(names, (list, tuple)):
                raise ConfigError(f"{k}: expects a list of button names, got {value!r}")
            buttons |= {_button(device, b, k) for b in names}
        elif key in STICKS:
            if not (isinstance(value, (list, tuple)) and len(value) == 2):
                raise ConfigError(f"{k}: expects [x, y] in [-1, 1], got {value!r}")
            for axis, v in zip(STICKS[key], value):
                axes[axis] = _number(v, -1.0, 1.0, k)
        elif key in SINGLE_AXES:
            lo = 0.0 if key.endswith("trigger") else -1.0
            axes[key] = _number(value, lo, 1.0, k)
        else:
            known = ["buttons", *STICKS, *SINGLE_AXES]
            close = difflib.get_close_matches(str(key), known, n=1)
            raise ConfigError(
                f"{k}: unknown control{f' (did you mean {close[0]!r}?)' if close else ''}; known: {known}"
            )
    return GamepadState(frozenset(buttons), axes)


def _number(v, lo: float, hi: float, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ConfigError(f"{where}: expects a number in [{lo:g}, {hi:g}], got {v!r}")
    return float(v)


class GamepadMapping:
    """Discrete (`actions`) or factorised (`heads`) actions -> GamepadState; `nvec` gives the heads' sizes."""

    def __init__(self, actions: dict | None = None, heads: dict | None = None, device: str = "x360",
                 where: str = "inputs"):  # fmt: skip
        if device not in BUTTONS:
            raise ConfigError(f"{where}.gamepad: unknown device {device!r}; choose x360 or ds4")
        self.device = device
        if bool(actions) == bool(heads):
            raise ConfigError(
                f"{where}: set exactly one of gamepad_actions (discrete) and gamepad_heads (factorised)"
            )
        if actions:
            self.discrete = True
            self.names = [str(a) for a in actions]
            self.heads = {
                "action": [_state(device, s, f"{where}.gamepad_actions.{a}") for a, s in actions.items()]
            }
        else:
            self.discrete = False
            self.heads = {}
            for h, choices in heads.items():
                if not isinstance(choices, (list, tuple)) or not choices:
                    raise ConfigError(f"{where}.gamepad_heads.{h}: expects a non-empty list of controls")
                self.heads[str(h)] = [
                    _state(device, s, f"{where}.gamepad_heads.{h}[{i}]") for i, s in enumerate(choices)
                ]
            owner: dict[str, str] = {}
            for h, states in self.heads.items():
                for axis in {a for s in states for a in s.axes}:
                    if axis in owner:
                        raise ConfigError(
                            f"{where}.gamepad_heads: heads {owner[axis]!r} and {h!r} both drive {axis}; give each axis to one head"
                        )
                    owner[axis] = h

    @property
    def nvec(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.heads.values())

    def state(self, action) -> GamepadState:
        """The state an action maps to: an index (or action name) when discrete, one index per head when factorised."""
        if self.discrete:
            if isinstance(action, str):
                if action not in self.names:
                    raise ConfigError(f"unknown gamepad action {action!r}; actions: {', '.join(self.names)}")
                action = self.names.index(action)
            idx = [int(action if not hasattr(action, "__len__") else action[0])]
        else:
            idx = [int(a) for a in action]
            if len(idx) != len(self.heads):
                raise ValueError(
                    f"gamepad action needs {len(self.heads)} indices ({', '.join(self.heads)}), got {action!r}"
                )
        buttons: set[str] = set()
        axes: dict[str, float] = {}
        for i, (h, states) in zip(idx, self.heads.items()):
            if not 0 <= i < len(states):
                raise ValueError(f"gamepad head {h!r}: index {i} out of range (size {len(states)})")
            buttons |= states[i].buttons
            axes.update(states[i].axes)
        return GamepadState(frozenset(buttons), axes)
