"""Reading a person's inputs as actions (pure Python, no device): held keys -> the keyboard
mapping's action (the most keys win), a gamepad state -> the nearest action of a gamepad mapping
(through the game's dead zones), and the device reports' conversions."""

from __future__ import annotations

import pytest

from rayapp.config import load_config
from rayapp.envs.inputs.gamepad_map import GamepadMapping, GamepadState
from rayapp.envs.inputs.keys import KEYS, KeyMapping
from rayapp.envs.inputs.listen import KeyReader, make_input_reader, win32_virtual_key
from rayapp.envs.inputs.pad_read import PadReader, pad_action, xinput_state
from rayapp.errors import ConfigError

INVADERS = {"NOOP": [], "FIRE": ["space"], "RIGHT": ["right"], "LEFT": ["left"],
            "RIGHTFIRE": ["right", "space"], "LEFTFIRE": ["left", "space"]}  # fmt: skip


@pytest.mark.parametrize(
    "held, action",
    [
        ([], "NOOP"),
        (["space"], "FIRE"),
        (["left"], "LEFT"),
        (["left", "space"], "LEFTFIRE"),  # the most keys win
        (["left", "space", "q"], "LEFTFIRE"),  # keys no action uses are ignored
        (["q"], "NOOP"),
        (["left", "right"], "RIGHT"),  # a tie: the first in the mapping
        (["Return"], "NOOP"),  # aliases are key names too
    ],
)
def test_held_keys_play_the_action_with_the_most_of_them(held, action):
    m = KeyMapping(INVADERS)
    assert m.names[m.held_action(held)] == action


def test_without_an_action_without_keys_nothing_held_is_action_0():
    assert KeyMapping({"LEFT": ["a"], "RIGHT": ["d"]}).held_action([]) == 0


class FakeKeys:
    def __init__(self):
        self.now: set[str] = set()
        self.closed = False

    def held(self):
        return set(self.now)

    def close(self):
        self.closed = True


def test_the_keyboard_reader_reads_the_configured_mapping_and_refuses_unknown_keys():
    cfg = load_config(
        None, ["inputs.backend=keyboard", "inputs.keys={NOOP: [], JUMP: [space], RUN: [lshift, d]}"]
    )
    state = FakeKeys()
    reader = make_input_reader(cfg.inputs, state=state)
    assert isinstance(reader, KeyReader) and reader.read() == 0
    state.now = {"lshift", "d", "space"}
    assert reader.read() == 2 and reader.last == ("d", "lshift", "space")
    reader.close()
    assert state.closed
    bad = load_config(None, ["inputs.backend=keyboard", "inputs.keys={NOOP: [], JUMP: [spacebar]}"])
    with pytest.raises(ConfigError, match="unknown key name 'spacebar'"):
        make_input_reader(bad.inputs, state=FakeKeys())
    with pytest.raises(ConfigError, match="keyboard, mouse or gamepad"):
        make_input_reader(load_config(None, ["inputs.backend=none"]).inputs, state=FakeKeys())


def test_windows_virtual_keys_come_from_the_scan_codes():
    seen = []

    def map_key(code, kind):
        seen.append((code, kind))
        return 0x25 if code == 0xE04B else 0x41

    assert win32_virtual_key(KEYS["left"], map_key) == 0x25  # extended: the E0 prefix
    assert win32_virtual_key(KEYS["a"], map_key) == 0x41
    assert seen == [(0xE04B, 3), (0x1E, 3)]  # MAPVK_VSC_TO_VK_EX


PAD = GamepadMapping({
    "NOOP": {}, "LEFT": {"left_stick": [-1, 0]}, "RIGHT": {"left_stick": [1, 0]}, "GAS": {"right_trigger": 1.0},
    "JUMP": {"buttons": ["a"]}, "JUMP_LEFT": {"buttons": ["a"], "left_stick": [-1, 0]},
})  # fmt: skip


@pytest.mark.parametrize(
    "buttons, axes, action",
    [
        ((), {}, "NOOP"),
        ((), {"left_x": -0.95, "left_y": 0.1}, "LEFT"),
        ((), {"left_x": 0.7}, "RIGHT"),
        ((), {"left_x": 0.2, "left_y": -0.1}, "NOOP"),  # inside XInput's 0.24 dead zone: the game reads 0
        ((), {"right_trigger": 0.9}, "GAS"),
        ((), {"right_trigger": 0.1}, "NOOP"),  # below the trigger threshold (30/255)
        (("a",), {}, "JUMP"),
        (("a",), {"left_x": -1.0}, "JUMP_LEFT"),
        (("b", "start"), {}, "NOOP"),  # buttons no action uses are ignored
        (("a", "b"), {"left_x": 0.9}, "JUMP"),  # the nearest: a held, the stick right matches no jump
    ],
)
def test_a_pad_state_plays_the_nearest_discrete_action(buttons, axes, action):
    assert PAD.names[pad_action(PAD, GamepadState(frozenset(buttons), axes))] == action


def test_a_pad_state_plays_one_choice_per_head_when_factorised():
    m = GamepadMapping(heads={
        "steer": [{"left_x": -1}, {"left_x": -0.3}, {}, {"left_x": 0.3}, {"left_x": 1}],
        "pedal": [{}, {"right_trigger": 1}, {"left_trigger": 1}],
        "fire": [{}, {"buttons": ["x"]}],
    })  # fmt: skip
    assert pad_action(m, GamepadState()) == [2, 0, 0]
    # 0.5 deflection reads (0.5 - 0.24) / 0.76 = 0.34 past the dead zone: the 0.3 choice
    assert pad_action(m, GamepadState(frozenset({"x"}), {"left_x": 0.5, "left_trigger": 1.0})) == [3, 2, 1]
    assert pad_action(m, GamepadState(frozenset(), {"left_x": -1.0, "right_trigger": 0.6})) == [0, 1, 0]


def test_custom_dead_zones_change_what_the_game_reads():
    from rayapp.envs.inputs.gamepad import dead_zones_from_config

    state = GamepadState(frozenset(), {"left_x": 0.2})
    assert PAD.names[pad_action(PAD, state)] == "NOOP"
    zones = dead_zones_from_config({"left_stick": {"inner": 0.05}})
    assert PAD.names[pad_action(PAD, state, zones)] == "NOOP"  # 0.16 read: still nearest to rest
    assert PAD.names[pad_action(PAD, GamepadState(frozenset(), {"left_x": 0.6}), zones)] == "RIGHT"


def test_an_xinput_report_becomes_a_pad_state_and_the_reader_maps_it():
    s = xinput_state(0x1000 | 0x0004, 0, 255, -32768, 0, 0, 32767)
    assert s.buttons == {"a", "dpad_left"} and s.axis("left_x") == -1.0 and s.axis("right_y") == 1.0
    assert s.axis("right_trigger") == 1.0 and s.axis("left_trigger") == 0.0

    class Pad:
        def read(self):
            return s

        def close(self):
            pass

    cfg = load_config(None, ["inputs.backend=gamepad",
                             "inputs.gamepad_actions={NOOP: {}, JUMP: {buttons: [a]}, GAS: {right_trigger: 1}}"])  # fmt: skip
    reader = make_input_reader(cfg.inputs, state=Pad())
    assert isinstance(reader, PadReader)
    assert reader.read() == 1 and reader.last == ("a", "dpad_left")  # JUMP and GAS tie: the first


CMDS = ["none", "move", "left_click", "right_click", "left_hold"]


@pytest.mark.parametrize(
    "buttons, before, moved, command",
    [
        (set(), set(), False, "none"),
        (set(), set(), True, "move"),
        ({"left"}, set(), True, "left_click"),  # just pressed: a click
        ({"left"}, {"left"}, True, "left_hold"),  # still held: a hold (a drag)
        ({"right"}, {"right"}, False, "right_click"),  # no right_hold in the mapping: its click
        ({"middle"}, set(), False, "none"),  # a button the mapping lacks: as if not pressed
    ],
)
def test_a_pointer_sample_is_the_mappings_mouse_command(buttons, before, moved, command):
    from rayapp.envs.inputs.listen import mouse_command

    assert CMDS[mouse_command(CMDS, buttons, before, moved)] == command


def test_the_mouse_reader_gives_the_cell_over_the_capture_region_wherever_it_is():
    samples = iter([(100, 50, set()), (179, 129, {"left"}), (500, 500, {"left"}), (110, 60, set())])

    class Pointer:
        def read(self):
            return next(samples)

        def close(self):
            pass

    region = [(100, 50, 80, 80)]
    cfg = load_config(
        None, ["inputs.backend=mouse", f"inputs.mouse_commands={CMDS}", "inputs.mouse_grid=[4, 4]"]
    )
    reader = make_input_reader(cfg.inputs, state=Pointer(), region=lambda: region[0])
    assert reader.read() == [0, 0, 0]  # first sample: not moved
    assert reader.read() == [2, 3, 3]  # bottom-right cell, left just pressed
    assert reader.read() == [4, 3, 3]  # off the region: clipped to the grid; still held
    region[0] = (0, 0, 400, 400)  # the window moved and grew
    assert reader.read() == [1, 1, 0]
