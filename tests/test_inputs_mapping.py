"""The pure parts of the input backends: key tables and scan codes, the mouse grid, the Windows
SendInput encoding, dead-zone translation (property tests) and the `inputs` config section."""

from __future__ import annotations

import ctypes
import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rayapp.config import describe_keys, load_config
from rayapp.envs.inputs import KEYS, DeadZone, KeyMapping, MouseGrid, action_nvec
from rayapp.envs.inputs.keys import key, win32_key_flags
from rayapp.envs.inputs.mouse_grid import win32_absolute
from rayapp.errors import ConfigError, InputDeviceError


def test_scan_codes_are_the_set1_make_codes():
    expect = {"escape": 0x01, "1": 0x02, "0": 0x0B, "q": 0x10, "p": 0x19, "a": 0x1E, "l": 0x26, "z": 0x2C,
              "m": 0x32, "enter": 0x1C, "lctrl": 0x1D, "lshift": 0x2A, "space": 0x39, "f1": 0x3B, "f10": 0x44,
              "f11": 0x57, "f12": 0x58, "up": 0x48, "left": 0x4B, "right": 0x4D, "down": 0x50}  # fmt: skip
    assert {n: KEYS[n].scan for n in expect} == expect
    assert [n for n, k in KEYS.items() if k.extended] == [
        "rctrl", "ralt", "home", "up", "pageup", "left", "right", "end", "down", "pagedown", "insert", "delete"
    ]  # fmt: skip
    pairs = [(k.scan, k.extended) for k in KEYS.values()]
    assert len(pairs) == len(set(pairs)), "two key names share one physical key"


def test_every_key_has_an_x11_keysym():
    XK = pytest.importorskip("Xlib.XK")
    missing = [n for n, k in KEYS.items() if XK.string_to_keysym(k.keysym) == 0]
    assert missing == []


def test_win32_flags_send_scan_codes_with_e0_and_keyup():
    assert win32_key_flags(KEYS["space"], True) == 0x0008
    assert win32_key_flags(KEYS["space"], False) == 0x0008 | 0x0002
    assert win32_key_flags(KEYS["right"], True) == 0x0008 | 0x0001
    assert win32_key_flags(KEYS["right"], False) == 0x0008 | 0x0001 | 0x0002


@pytest.mark.skipif(ctypes.sizeof(ctypes.c_void_p) != 8, reason="the records are checked against the x64 layout")
def test_sendinput_records_have_the_windows_x64_layout_and_content():
    from rayapp.envs.inputs.win32 import INPUT, KEYBDINPUT, MOUSEINPUT, key_input, mouse_input

    # sizes and offsets of the Win32 structures on x64 (winuser.h): SendInput refuses any other cbSize
    assert (ctypes.sizeof(INPUT), ctypes.sizeof(KEYBDINPUT), ctypes.sizeof(MOUSEINPUT)) == (40, 24, 32)
    assert INPUT.u.offset == 8 and KEYBDINPUT.dwFlags.offset == 4 and KEYBDINPUT.dwExtraInfo.offset == 16
    assert MOUSEINPUT.mouseData.offset == 8 and MOUSEINPUT.dwFlags.offset == 12
    rec = bytes(key_input(KEYS["right"], False))
    assert rec[:4] == (1).to_bytes(4, "little")  # INPUT_KEYBOARD
    assert rec[8:10] == b"\0\0" and rec[10:12] == (0x4D).to_bytes(2, "little")  # wVk 0, wScan
    assert rec[12:16] == (0x0008 | 0x0001 | 0x0002).to_bytes(4, "little")  # scan code, E0, key up
    rec = bytes(mouse_input(65535, 0, 0x0800, -120))  # a wheel notch towards the user
    assert rec[:4] == b"\0\0\0\0" and rec[8:12] == (65535).to_bytes(4, "little")
    assert rec[16:20] == (-120 & 0xFFFFFFFF).to_bytes(4, "little") and rec[20:24] == (0x0800).to_bytes(4, "little")


def test_sendinput_is_refused_off_windows():
    from rayapp.envs.inputs.win32 import SendInputSink

    if sys.platform == "win32":
        pytest.skip("on Windows it opens for real")
    with pytest.raises(InputDeviceError, match="Windows input path"):
        SendInputSink()


def test_unknown_key_names_the_key_and_close_valid_names():
    with pytest.raises(ConfigError, match=r"inputs.keys.JUMP: unknown key name 'spce'; did you mean 'space'"):
        KeyMapping({"JUMP": ["spce"]})
    with pytest.raises(ConfigError, match=r"'lshift'"):
        key("lshfit")
    assert key("Esc").name == "escape" and key("ctrl").name == "lctrl" and key("LEFT").name == "left"


def test_key_mapping_numbers_actions_in_order():
    m = KeyMapping({"NOOP": [], "LEFT": "a", "FIRE+RIGHT": ["space", "d", "space"]})
    assert m.names == ["NOOP", "LEFT", "FIRE+RIGHT"] and len(m) == 3
    assert [k.name for k in m.keys(2)] == ["space", "d"] and m.keys("LEFT") == (KEYS["a"],)
    with pytest.raises(ValueError, match="out of range"):
        m.keys(3)
    with pytest.raises(ConfigError, match="needs at least one action"):
        KeyMapping({})
    # the inverse a recorder needs: the person's held keys -> the action (None: no such action)
    assert m.action_for(set()) == 0 and m.action_for({"d", "space"}) == 2 and m.action_for(["A"]) == 1
    assert m.action_for({"d"}) is None


def test_mouse_grid_aims_at_cell_centres_and_inverts():
    g = MouseGrid(["none", "move", "left_click"], 4, 3, (100, 50, 400, 300))
    assert g.nvec == (3, 4, 3)
    assert g.point(0, 0) == (150, 100) and g.point(3, 2) == (450, 300)
    assert all(g.cell(*g.point(i, j)) == (i, j) for i in range(4) for j in range(3))
    assert g.cell(0, 0) == (0, 0) and g.cell(10_000, 10_000) == (3, 2)  # clipped to the grid
    cmd, point = g.decode((2, 1, 1))
    assert (cmd.name, cmd.button, cmd.hold, point) == ("left_click", "left", "click", (250, 200))
    with pytest.raises(ConfigError, match="unknown \\['warp'\\]"):
        MouseGrid(["warp"], 2, 2, (0, 0, 10, 10))
    with pytest.raises(ValueError, match="outside"):
        g.point(4, 0)
    moved = g.with_region((0, 0, 40, 30))
    assert moved.nvec == g.nvec and moved.point(0, 0) == (5, 5)


def test_win32_absolute_coordinates_span_the_virtual_desktop():
    screen = (-1920, 0, 3840, 1080)  # two monitors, the left one at negative x
    assert win32_absolute(-1920, 0, screen) == (0, 0)
    assert win32_absolute(1919, 1079, screen) == (65535, 65535)
    xs = [win32_absolute(x, 500, screen)[0] for x in range(-1920, 1920, 7)]
    assert xs == sorted(xs)


# ---- dead zones: property tests ----------------------------------------------------------------
zones = st.builds(
    lambda inner, width, mode: DeadZone(inner, min(1.0, inner + width), mode),
    st.floats(0.0, 0.6), st.floats(0.05, 1.0), st.sampled_from(["radial", "axial"]),
)  # fmt: skip
unit = st.floats(-1.0, 1.0, allow_nan=False)
scales = st.sampled_from([32767, 127, 255])


@settings(max_examples=300, deadline=None)
@given(zones, unit, unit)
def test_translation_is_monotone(z, a, b):
    lo, hi = sorted((a, b))
    assert z.translate_1d(lo) <= z.translate_1d(hi)
    # radial: a longer output in the same direction is a longer deflection
    r1, r2 = sorted((abs(a), abs(b)))
    d1, d2 = (math.hypot(*z.translate(r * 0.6, r * 0.8)) for r in (r1, r2))
    assert d1 <= d2 + 1e-12


@settings(max_examples=300, deadline=None)
@given(zones, unit, unit, scales)
def test_no_nonzero_output_is_lost_in_the_games_dead_zone(z, x, y, scale):
    qx, qy = z.quantise(x, y, scale)
    gx, gy = z.reading(qx / scale, qy / scale)
    if x == 0 and y == 0:
        assert (qx, qy) == (0, 0)
    elif z.mode == "axial":
        assert (gx != 0) == (x != 0) and (gy != 0) == (y != 0)
        assert math.copysign(1, gx) == math.copysign(1, x) if x else True
    else:
        assert (gx, gy) != (0.0, 0.0)
    assert max(abs(qx), abs(qy)) <= scale
    q = z.quantise_1d(abs(x), scale)
    assert (z.reading_1d(q / scale) > 0) == (x != 0)


@settings(max_examples=300, deadline=None)
@given(zones, unit, unit)
def test_the_game_reads_back_the_policy_output(z, x, y):
    """The translation is the inverse of the (scaled) dead zone a game applies."""
    assert z.reading_1d(z.translate_1d(x)) == pytest.approx(x, abs=1e-9)
    gx, gy = z.reading(*z.translate(x, y))
    if z.mode == "axial" or math.hypot(x, y) <= 1:
        assert (gx, gy) == (pytest.approx(x, abs=1e-9), pytest.approx(y, abs=1e-9))


@given(zones, scales)
def test_full_output_reaches_the_outer_limit(z, scale):
    assert z.translate_1d(1.0) == pytest.approx(z.outer) and z.translate_1d(-1.0) == pytest.approx(-z.outer)
    if z.mode == "radial":  # a full-length stick in any direction is at the outer limit
        assert math.hypot(*z.translate(0.6, 0.8)) == pytest.approx(z.outer)
    else:  # each axis on its own
        assert z.translate(1.0, -1.0) == (pytest.approx(z.outer), pytest.approx(-z.outer))
    assert abs(z.quantise_1d(1.0, scale) - z.outer * scale) <= 0.5
    assert z.reading_1d(z.quantise_1d(1.0, scale) / scale) == pytest.approx(
        1.0, abs=1 / (scale * (z.outer - z.inner))
    )


def test_dead_zone_refuses_bad_bounds():
    with pytest.raises(ConfigError, match="inner < outer"):
        DeadZone(0.5, 0.4)
    with pytest.raises(ConfigError, match="radial or axial"):
        DeadZone(0.1, 1.0, "square")


# ---- config ------------------------------------------------------------------------------------
def test_inputs_config_keys_are_documented_and_unknown_ones_refused():
    keys = {k: h for k, _, _, h in describe_keys()}
    for k in ("backend", "keys", "mouse_commands", "mouse_grid", "gamepad", "gamepad_actions",
              "gamepad_heads", "dead_zones"):  # fmt: skip
        assert keys[f"inputs.{k}"], k
    with pytest.raises(ConfigError, match=r"unknown config key 'inputs.key'.*did you mean 'inputs.keys'"):
        load_config(None, ["inputs.key={A: [a]}"])
    with pytest.raises(ConfigError, match="needs inputs.keys"):
        load_config(None, ["inputs.backend=keyboard"])
    with pytest.raises(ConfigError, match="expects one of"):
        load_config(None, ["inputs.backend=joystick"])
    cfg = load_config(None, ["inputs.backend=mouse", "inputs.mouse_grid=[8, 4]"]).inputs
    assert action_nvec(cfg) == (4, 8, 4)
    cfg = load_config(None, ["inputs.backend=keyboard", "inputs.keys={NOOP: [], FIRE: [space]}"]).inputs
    assert action_nvec(cfg) == (2,)


def test_the_head_node_imports_no_input_device_library():
    code = ("import sys, rayapp.envs.inputs, rayapp.envs.inputs.factory; "
            "print([m for m in ('Xlib', 'vgamepad', 'libevdev', 'pynput', 'evdev', 'mss') if m in sys.modules])")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_subnormal_stick_outputs_stay_inside_the_outer_limit():
    """Found by the property test: x / r and y / r of subnormal outputs are not a unit vector, which
    sent (5e-324, 5e-324) out at 1.41 x the outer limit before the direction was renormalised."""
    z = DeadZone(0.5, 0.625, "radial")
    assert math.hypot(*z.translate(5e-324, 5e-324)) == pytest.approx(0.5, abs=1e-9)
    assert math.hypot(*z.reading(*z.translate(5e-324, 5e-324))) <= 1e-300


def test_the_readme_inputs_example_is_a_valid_config(tmp_path):
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = text.split("### Input backends", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "inputs.yaml").write_text(block)
    path = str(tmp_path / "inputs.yaml")
    assert action_nvec(load_config(path).inputs) == (5,)
    assert action_nvec(load_config(path, ["inputs.backend=gamepad"]).inputs) == (5, 3, 2)
    assert action_nvec(load_config(path, ["inputs.backend=mouse"]).inputs) == (4, 16, 9)
