"""The gamepad backend at the uinput event level: real vgamepad objects (real libevdev devices, real
reports), with only the uinput writer substituted (this kernel has no /dev/uinput). Every event the
pad would write is checked, including that each value lies in the range the device declares."""

from __future__ import annotations

import os

import pytest

from rayapp.config import load_config
from rayapp.envs.inputs import DEFAULT_DEAD_ZONES, GamepadBackend, GamepadMapping, make_input_backend
from rayapp.envs.inputs.base import release_every_backend
from rayapp.errors import ConfigError

vgamepad = pytest.importorskip("vgamepad")
libevdev = pytest.importorskip("libevdev")
vlin = pytest.importorskip("vgamepad.lin.virtual_gamepad")

X360_BUTTONS = ["BTN_START", "BTN_SELECT", "BTN_THUMBL", "BTN_THUMBR", "BTN_TL", "BTN_TR", "BTN_MODE",
                "BTN_SOUTH", "BTN_EAST", "BTN_NORTH", "BTN_WEST"]  # fmt: skip
DS4_BUTTONS = ["BTN_THUMBR", "BTN_THUMBL", "BTN_START", "BTN_SELECT", "BTN_TR2", "BTN_TL2", "BTN_TR",
               "BTN_TL", "BTN_NORTH", "BTN_EAST", "BTN_SOUTH", "BTN_WEST", "BTN_MODE"]  # fmt: skip


class UinputRecorder:
    """Stands in for the uinput device vgamepad writes to: keeps every report, checks its ranges."""

    def __init__(self, device):
        self.name = device.name
        self.id = device.id
        self.ranges = {}
        for code in libevdev.EV_ABS.codes:
            info = device.absinfo[code]
            if info is not None:
                self.ranges[code.name] = (info.minimum, info.maximum)
        self.reports: list[list[tuple[str, int]]] = []

    def send_events(self, events):
        report = [(e.code.name, e.value) for e in events]
        for name, value in report:
            if name in self.ranges:
                lo, hi = self.ranges[name]
                assert lo <= value <= hi, f"{self.name}: {name}={value} outside [{lo}, {hi}]"
        assert report[-1] == ("SYN_REPORT", 0), "a report must end with SYN_REPORT"
        self.reports.append(report)


@pytest.fixture
def pads(monkeypatch):
    """vgamepad with its uinput writer replaced; yields the list of pads created.

    The two methods replaced are vgamepad 0.2's private device writers (vgamepad/lin/virtual_gamepad.py),
    the only way to run it without /dev/uinput; monkeypatch.setattr fails loudly if they move."""
    made = []

    def main_device(self):
        self.device.enable(libevdev.EV_FF.FF_RUMBLE)  # what the real method enables before writing
        made.append(self)
        return UinputRecorder(self.device)

    def other_device(self, device=None, uinput_fd=None):
        return UinputRecorder(self.device if device is None else device)

    monkeypatch.setattr(vlin.VGamepad, "_create_gamepad_uinput_device", main_device)
    monkeypatch.setattr(vlin.VGamepad, "_create_uinput_device", other_device)
    return made


def x360_report(buttons=(), x=0, y=0, rx=0, ry=0, lt=0, rt=0, hat=(0, 0)):
    """The report vgamepad writes for an X360 state (Y axes bitwise-inverted as the Linux xpad driver does)."""
    return ([(b, int(b in buttons)) for b in X360_BUTTONS]
            + [("ABS_X", x), ("ABS_Y", ~y), ("ABS_RX", rx), ("ABS_RY", ~ry), ("ABS_Z", lt), ("ABS_RZ", rt),
               ("ABS_HAT0X", hat[0]), ("ABS_HAT0Y", hat[1]), ("SYN_REPORT", 0)])  # fmt: skip


NEUTRAL = x360_report()
X360_ACTIONS = {
    "NOOP": {},
    "GAS": {"right_trigger": 1.0},
    "LEFT": {"left_stick": [-1, 0]},
    "JUMP": {"buttons": ["a", "rb"]},
    "NUDGE": {"left_stick": [0.05, 0.0], "left_trigger": 0.02},
    "UPRIGHT": {"buttons": ["dpad_up", "dpad_right"], "right_stick": [0, 1]},
}


def test_x360_every_event_of_every_step(pads):
    pad = GamepadBackend(
        GamepadMapping(X360_ACTIONS, device="x360"), device_factory=lambda d: vgamepad.VX360Gamepad()
    )
    out = pads[0].uinput
    assert out.reports == [NEUTRAL]  # vgamepad sends a neutral report when it is created
    pad.apply("GAS")
    assert out.reports[-1] == x360_report(rt=255)
    pad.apply("LEFT")  # full output reaches the outer limit (1.0 by default)
    assert out.reports[-1] == x360_report(x=-32767)
    pad.apply("JUMP")
    assert out.reports[-1] == x360_report(buttons=("BTN_SOUTH", "BTN_TR"))
    pad.apply("UPRIGHT")  # +y is up: the evdev value goes negative, as a real pad's does
    assert out.reports[-1] == x360_report(hat=(1, -1), ry=32767)
    assert dict(out.reports[-1])["ABS_RY"] < 0
    assert pad.pressed() == ("dpad_right", "dpad_up", "right_y")
    pad.apply("NUDGE")  # a small output is sent past XInput's dead zone, so the game reads it back
    sent = dict(out.reports[-1])
    lz, tz = DEFAULT_DEAD_ZONES["left_stick"], DEFAULT_DEAD_ZONES["left_trigger"]
    assert sent["ABS_X"] > 7849 and sent["ABS_Y"] == -1
    assert lz.reading(sent["ABS_X"] / 32767, 0.0)[0] == pytest.approx(0.05, abs=1e-4)
    assert sent["ABS_Z"] > 30 and tz.reading_1d(sent["ABS_Z"] / 255) == pytest.approx(
        0.02, abs=1 / 225
    )  # one device step
    n = len(out.reports)
    pad.close()
    assert out.reports[n:] == [NEUTRAL] and pad.pressed() == ()
    assert len(out.reports) == 7  # one report per step: nothing sent twice, nothing half-written


def test_x360_releases_on_exceptions_and_at_exit(pads):
    pad = GamepadBackend(
        GamepadMapping(X360_ACTIONS, device="x360"), device_factory=lambda d: vgamepad.VX360Gamepad()
    )
    out = pads[0].uinput
    pad.apply("JUMP")
    with pytest.raises(ValueError, match="out of range"):
        pad.apply(99)
    assert out.reports[-1] == NEUTRAL and pad.pressed() == ()
    with pytest.raises(ConfigError, match="unknown gamepad action 'JUPM'"):
        pad.apply("JUPM")
    pad.apply("GAS")
    release_every_backend()  # what atexit runs
    assert out.reports[-1] == NEUTRAL and pad.closed


def test_ds4_factorised_every_event(pads):
    cfg = load_config(None, [
        "inputs.backend=gamepad", "inputs.gamepad=ds4",
        "inputs.gamepad_heads={steer: [{left_x: -1}, {}, {left_x: 1}], pitch: [{}, {left_y: 1}],"
        " pedal: [{}, {right_trigger: 1}], buttons: [{}, {buttons: [a, ps]}, {buttons: [dpad_up, dpad_right, options]}]}",
        "inputs.dead_zones={left_stick: {inner: 0.1, mode: axial}}",
    ]).inputs  # fmt: skip
    pad = make_input_backend(cfg, device_factory=lambda d: vgamepad.VDS4Gamepad())
    assert pad.mapping.nvec == (3, 2, 2, 3)
    dev = pads[0]
    main, touch = dev.uinput, dev.touchpad_uinput

    def ds4(buttons=(), x=128, y=128, rx=128, ry=128, lt=0, rt=0, hat=(0, 0)):
        return ([(b, int(b in buttons)) for b in DS4_BUTTONS]
                + [("ABS_X", x), ("ABS_Y", y), ("ABS_RX", rx), ("ABS_RY", ry), ("ABS_Z", lt), ("ABS_RZ", rt),
                   ("ABS_HAT0X", hat[0]), ("ABS_HAT0Y", hat[1]), ("SYN_REPORT", 0)])  # fmt: skip

    assert main.reports == [ds4()]
    pad.apply((0, 1, 1, 1))  # left, up, gas, cross + PS
    assert main.reports[-1] == ds4(buttons=("BTN_SOUTH", "BTN_MODE"), x=1, y=1, rt=255)
    pad.apply((2, 0, 0, 2))  # right, dpad up+right (the DS4's hat), options
    assert main.reports[-1] == ds4(buttons=("BTN_START",), x=255, hat=(1, -1))
    assert touch.reports[-1] == [("BTN_LEFT", 0), ("SYN_REPORT", 0)]  # the touchpad device: untouched
    pad.close()
    assert main.reports[-1] == ds4() and len(main.reports) == 4


def test_gamepad_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match=r"unknown x360 button 'jmp'"):
        GamepadMapping({"J": {"buttons": ["jmp"]}})
    with pytest.raises(ConfigError, match=r"both drive left_x"):
        GamepadMapping(heads={"a": [{"left_x": 1}], "b": [{"left_stick": [0, 1]}]})
    with pytest.raises(ConfigError, match=r"in \[0, 1\]"):
        GamepadMapping({"BRAKE": {"left_trigger": -0.5}})
    with pytest.raises(ConfigError, match="exactly one of"):
        GamepadMapping()
    with pytest.raises(ConfigError, match="did you mean 'left_stick'"):
        GamepadMapping({"L": {"left_stik": [1, 0]}})
    with pytest.raises(ConfigError, match="needs inputs.gamepad_actions"):
        load_config(None, ["inputs.backend=gamepad"])
    with pytest.raises(ConfigError, match="inner < outer"):
        make_input_backend(load_config(None, ["inputs.backend=gamepad", "inputs.gamepad_actions={A: {}}",
                                              "inputs.dead_zones={right_stick: {inner: 0.9, outer: 0.5}}"]).inputs)  # fmt: skip


def test_a_pad_that_cannot_be_created_says_what_to_do():
    from rayapp.envs.inputs.gamepad import open_gamepad
    from rayapp.errors import InputDeviceError

    if os.path.exists("/dev/uinput"):
        pytest.skip("this machine has /dev/uinput: a real pad would be created")
    with pytest.raises(InputDeviceError, match="/dev/uinput"):
        open_gamepad("x360")  # this kernel has no /dev/uinput: the real vgamepad fails
