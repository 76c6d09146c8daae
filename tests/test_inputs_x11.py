"""Keyboard and mouse backends against a real X server (Xvfb, no window manager): a plain X window
made here receives the XTEST events, and the server's own key and button state (query_keymap,
query_pointer) shows that nothing is left pressed after closes, exceptions and process exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import held_keys

from rayapp.config import load_config
from rayapp.envs.inputs import KeyboardBackend, MouseBackend, MouseGrid, make_input_backend
from rayapp.envs.inputs.keys import KEYS
from rayapp.envs.inputs.x11 import XTestSink
from rayapp.errors import ConfigError, InputDeviceError

pytest.importorskip("Xlib")
from Xlib import XK, X  # noqa: E402
from Xlib import display as xdisplay  # noqa: E402
from Xlib.ext import xtest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAME = 1 / 30  # hold every input at least one frame, as a game polling at 30 fps would need
MAPPING = {"NOOP": [], "LEFT": ["a"], "FIRE+RIGHT": ["space", "d"], "FIRE": ["space"]}
WIN = (100, 100, 300, 200)  # left, top, width, height


class Probe:
    """A plain X window that records the key, button and motion events it receives."""

    def __init__(self, name: str):
        self.d = xdisplay.Display(name)
        s = self.d.screen()
        mask = (X.KeyPressMask | X.KeyReleaseMask | X.ButtonPressMask | X.ButtonReleaseMask
                | X.PointerMotionMask | X.StructureNotifyMask)  # fmt: skip
        self.win = s.root.create_window(*WIN, 0, s.root_depth, X.InputOutput, X.CopyFromParent,
                                        background_pixel=s.white_pixel, event_mask=mask)  # fmt: skip
        self.win.map()
        self.d.sync()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # wait until the server has mapped it
            if self.d.pending_events() and self.d.next_event().type == X.MapNotify:
                break
            time.sleep(0.005)
        # no window manager: keyboard focus follows the pointer, so put the pointer inside
        xtest.fake_input(self.d, X.MotionNotify, x=WIN[0] + 10, y=WIN[1] + 10)
        self.d.sync()
        time.sleep(FRAME)
        self.events()

    def _drain(self) -> list[tuple]:
        self.d.sync()
        out = []
        names = {X.KeyPress: "press", X.KeyRelease: "release", X.ButtonPress: "down",
                 X.ButtonRelease: "up", X.MotionNotify: "motion"}  # fmt: skip
        while self.d.pending_events():
            e = self.d.next_event()
            if e.type in names and e.window.id == self.win.id:
                out.append((names[e.type], e.detail, e.event_x, e.event_y, e.state))
        return out

    def events(self, n: int = 0) -> list[tuple]:
        """(kind, detail, x, y, state) of the input events received since the last call: waits (up
        to 5 s, the machine may be loaded) for `n` of them, then one frame more for any extra (and
        so every input is held at least one frame)."""
        out = self._drain()
        deadline = time.monotonic() + 5
        while len(out) < n and time.monotonic() < deadline:
            time.sleep(0.005)
            out += self._drain()
        time.sleep(FRAME)
        return out + self._drain()

    def close(self) -> None:
        self.win.destroy()
        self.d.close()


def held_buttons(name: str) -> int:
    d = xdisplay.Display(name)
    try:
        return d.screen().root.query_pointer().mask & (X.Button1Mask | X.Button2Mask | X.Button3Mask)
    finally:
        d.close()


@pytest.fixture
def probe(display):
    assert held_keys(display) == [] and held_buttons(display) == 0, "a previous test left input pressed"
    p = Probe(display)
    yield p
    p.close()


def code(name: str, d) -> int:
    return d.keysym_to_keycode(XK.string_to_keysym(KEYS[name].keysym))


def test_keyboard_holds_each_step_and_releases_only_what_changes(probe, display):
    c = {k: code(k, probe.d) for k in ("a", "space", "d")}
    kb = KeyboardBackend(MAPPING)
    with kb:
        kb.apply("LEFT")
        assert [(e[0], e[1]) for e in probe.events(1)] == [("press", c["a"])]
        assert held_keys(display) == [c["a"]] and kb.pressed() == ("a",)
        kb.apply(2)  # FIRE+RIGHT, by number: the mapping's order
        assert [(e[0], e[1]) for e in probe.events(3)] == [
            ("release", c["a"]),
            ("press", c["space"]),
            ("press", c["d"]),
        ]
        kb.apply("FIRE")  # space stays down: no spurious release between steps
        assert [(e[0], e[1]) for e in probe.events(1)] == [("release", c["d"])]
        kb.apply("FIRE")
        assert probe.events(0) == []
        assert kb.pressed() == ("space",) and held_keys(display) == [c["space"]]
    assert [(e[0], e[1]) for e in probe.events(1)] == [("release", c["space"])]
    assert held_keys(display) == [] and kb.pressed() == ()
    with pytest.raises(RuntimeError, match="closed"):
        kb.apply("LEFT")


def test_keyboard_releases_when_the_with_block_raises(probe, display):
    with pytest.raises(ZeroDivisionError):
        with make_input_backend(
            load_config(None, ["inputs.backend=keyboard", "inputs.keys={UP: [up, lshift]}"]).inputs
        ) as kb:
            kb.apply("UP")
            assert len(held_keys(display)) == 2
            raise ZeroDivisionError("the game step failed")
    assert held_keys(display) == []
    assert sorted(e[0] for e in probe.events(4)) == ["press", "press", "release", "release"]


class FailingSink(XTestSink):
    """The real XTEST sender that fails when asked to press one given key (a device error halfway)."""

    def __init__(self, fail_on: str):
        super().__init__()
        self.fail_on = fail_on

    def key(self, k, down):
        if down and k.name == self.fail_on:
            raise InputDeviceError(f"cannot press {k.name}")
        super().key(k, down)


def test_a_failure_halfway_through_apply_releases_what_was_pressed(probe, display):
    kb = KeyboardBackend(MAPPING, sink=FailingSink("d"))
    kb.apply("LEFT")
    with pytest.raises(InputDeviceError, match="cannot press d"):
        kb.apply("FIRE+RIGHT")  # space goes down, then d fails
    assert held_keys(display) == [] and kb.pressed() == ()
    kinds = [e[0] for e in probe.events(4)]
    assert kinds.count("press") == kinds.count("release") == 2  # a, space: each pressed and released
    kb.close()


_SCRIPT = """
import os, sys, time
from rayapp.envs.inputs import KeyboardBackend, release_on_signals
release_on_signals()
kb = KeyboardBackend({{"FIRE+RIGHT": ["space", "d"]}})
kb.apply(0)
print("held", flush=True)
{ending}
"""


def _run(display: str, ending: str, signal_after: float | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, DISPLAY=display, PYTHONPATH=ROOT)
    script = _SCRIPT.format(ending=textwrap.dedent(ending))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    if signal_after is not None:
        assert proc.stdout.readline().strip() == "held"
        assert len(held_keys(display)) == 2  # both keys really down before the signal
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize(
    "ending, rc",
    [("raise RuntimeError('game crashed')", 1), ("sys.exit(3)", 3), ("pass", 0)],
    ids=["uncaught-exception", "sys-exit", "end-of-script"],
)
def test_process_exit_without_close_releases_the_keys(display, ending, rc):
    assert held_keys(display) == []
    r = _run(display, ending)
    assert r.returncode == rc, r.stderr
    assert held_keys(display) == [], "atexit did not release the keys"


def test_sigterm_releases_the_keys_with_release_on_signals(display):
    r = _run(display, "time.sleep(60)", signal_after=0.0)
    assert r.returncode == 128 + signal.SIGTERM, r.stderr
    assert held_keys(display) == []


def test_the_key_state_check_sees_a_key_left_down(display):
    """Control for the tests above: a process that dies without Python's exit path (os._exit) does
    leave its keys down on the X server, so `held_keys` would catch a missing release."""
    r = _run(display, "os._exit(0)")
    assert r.returncode == 0, r.stderr
    d = xdisplay.Display(display)
    try:
        codes = sorted(code(k, d) for k in ("space", "d"))
        assert held_keys(display) == codes
        for c in codes:  # clean up for the tests after this one
            xtest.fake_input(d, X.KeyRelease, c)
        d.sync()
    finally:
        d.close()
    assert held_keys(display) == []


def test_unknown_key_is_refused_before_anything_is_pressed(display):
    cfg = load_config(None, ["inputs.backend=keyboard", "inputs.keys={JUMP: [spcae]}"]).inputs
    with pytest.raises(ConfigError, match=r"unknown key name 'spcae'.*'space'"):
        make_input_backend(cfg)
    assert held_keys(display) == []


def test_no_display_is_one_clear_error(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    with pytest.raises(InputDeviceError, match="DISPLAY is not set"):
        KeyboardBackend(MAPPING)
    with pytest.raises(InputDeviceError, match="cannot open X display ':4242'"):
        KeyboardBackend(MAPPING, display=":4242")


def test_mouse_moves_clicks_holds_and_releases(probe, display):
    grid = MouseGrid(["none", "move", "left_click", "right_click", "left_hold"], 3, 2, WIN)
    m = MouseBackend(grid)
    with m:
        m.apply((1, 1, 1))  # move to the centre cell (1, 1): window pixel (150, 150)
        assert [e[:4] for e in probe.events(1)] == [("motion", 0, 150, 150)]
        m.apply((2, 0, 0))  # left click on cell (0, 0): pointer first, then the button, held for the step
        assert [e[:4] for e in probe.events(2)] == [("motion", 0, 50, 50), ("down", 1, 50, 50)]
        assert held_buttons(display) == X.Button1Mask and m.pressed() == ("mouse_left",)
        m.apply((0, 2, 1))  # none: the click ends, the pointer stays
        assert [e[:4] for e in probe.events(1)] == [("up", 1, 50, 50)]
        m.apply((4, 2, 1))  # left hold at (2, 1), then drag to (2, 0) with the button still down
        m.apply((4, 2, 0))
        ev = probe.events(3)
        assert [e[:4] for e in ev] == [("motion", 0, 250, 150), ("down", 1, 250, 150), ("motion", 0, 250, 50)]
        assert ev[-1][4] & X.Button1Mask  # the drag's motion carries the held button
        m.apply((3, 1, 0))  # right click: the hold ends first
        assert [e[:4] for e in probe.events(3)] == [
            ("up", 1, 250, 50),
            ("motion", 0, 150, 50),
            ("down", 3, 150, 50),
        ]
        m.apply((3, 1, 0))  # the same click again is a new click: up, then down
        assert [e[:4] for e in probe.events(2) if e[0] != "motion"] == [("up", 3, 150, 50), ("down", 3, 150, 50)]
    assert [e[:4] for e in probe.events(1)] == [("up", 3, 150, 50)]
    assert held_buttons(display) == 0 and m.pressed() == ()


def test_the_test_bed_captures_a_window_with_mss(probe, display):
    """The Xvfb test bed serves capture too (the screen env's side): mss grabs the probe window's
    white region and the black root beside it (needs the libxcb libraries .ci/run installs)."""
    mss = pytest.importorskip("mss")
    np = pytest.importorskip("numpy")
    left, top, width, height = WIN
    with mss.MSS(display=display) if hasattr(mss, "MSS") else mss.mss(display=display) as sct:
        inside = np.asarray(sct.grab({"left": left, "top": top, "width": width, "height": height}))
        outside = np.asarray(sct.grab({"left": left + width + 50, "top": top, "width": 20, "height": 20}))
    assert inside.shape == (height, width, 4) and (inside[..., :3] == 255).all()
    assert not (outside[..., :3] == 255).all()


def test_every_key_name_is_on_the_servers_keyboard_and_a_missing_one_fails_at_start(display):
    from rayapp.envs.inputs.keys import Key, KeyMapping

    sink = XTestSink()
    try:
        assert all(sink.keycode(k) for k in KEYS.values())
    finally:
        sink.close()
    m = KeyMapping({"NOOP": [], "HANGUL": ["a"]})
    m._keys[1] = (Key("hangul", "Hangul", 0x72),)  # a keysym Xvfb's default keyboard map lacks
    with pytest.raises(
        InputDeviceError, match="'hangul' \\(Hangul\\) is not on this X server's keyboard map"
    ):
        KeyboardBackend(m)  # at construction, before any step
    assert held_keys(display) == []
