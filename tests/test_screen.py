"""The screen path against a real X server (Xvfb, no window manager): `rayapp arcade` plays Breakout
in a real pygame window, `ScreenEnv` finds that window by its title, captures it with mss, and
acts through the keyboard backend (XTEST); the game reacts, the observation equals the emulator's
own preprocessed frame, and the X server's key state shows nothing left pressed after closes and
failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TITLE, ArcadeProcess, held_keys, wait_for_window  # noqa: F401

from rayapp.config import load_config
from rayapp.envs.screen import ScreenCapture, ScreenEnv, WindowFinder
from rayapp.errors import CaptureError, ConfigError
from rayapp.frames import FrameSpec, FrameStacker, Preprocessor
from rayapp.play.arcade import Arcade

pytest.importorskip("Xlib")
pytest.importorskip("mss")
pytest.importorskip("pygame")  # the arcade window
from Xlib import X  # noqa: E402
from Xlib import display as xdisplay  # noqa: E402
from Xlib.protocol import event as xevent  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ARCADE_SCREEN = str(ROOT / "configs" / "arcade-screen.yaml")


def screen_cfg(*overrides: str):
    return load_config(ARCADE_SCREEN, list(overrides))


def paddle_x(frame: np.ndarray) -> float:
    """Breakout's paddle (red, rows 189-192) in a 210x160 RGB frame: its mean column."""
    band = frame[189:193, 8:152].astype(int)
    xs = np.nonzero(((band[..., 0] > 150) & (band[..., 1] < 100)).any(0))[0]
    assert len(xs), "no paddle in the frame"
    return float(xs.mean()) + 8


def ball_visible(frame: np.ndarray) -> bool:
    """Anything drawn between the bricks and the paddle (rows 100-185): the ball."""
    return bool(frame[100:186, 8:152].any())


def test_the_arcade_window_appears_with_its_title_and_stops_on_sigterm(arcade):
    assert (arcade.rect.width, arcade.rect.height) == (480, 630)  # 160x210 scaled 3 times
    assert arcade.window.title == TITLE
    assert "keys NOOP: -, FIRE: space, RIGHT: right, LEFT: left" in arcade.first_line
    rc, out, err = arcade.stop(signal.SIGTERM)
    assert rc == 0, err
    assert out.strip().splitlines()[-1].endswith("stopped by SIGTERM")
    with pytest.raises(CaptureError, match="no window titled"):
        WindowFinder().find(TITLE)  # the window went with it


def test_the_arcade_stops_when_its_window_is_closed(arcade, display):
    d = xdisplay.Display(display)
    try:  # what a window manager's close button sends: WM_DELETE_WINDOW
        win = d.create_resource_object("window", arcade.window.id)
        protocols, delete = d.intern_atom("WM_PROTOCOLS"), d.intern_atom("WM_DELETE_WINDOW")
        ev = xevent.ClientMessage(
            window=win, client_type=protocols, data=(32, [delete, X.CurrentTime, 0, 0, 0])
        )
        win.send_event(ev, event_mask=X.NoEventMask)
        d.sync()
    finally:
        d.close()
    rc, out, err = arcade.stop(sig=None)
    assert rc == 0, err
    assert out.strip().splitlines()[-1].endswith("stopped by the window closing")


def test_screen_env_plays_the_arcade_through_the_keyboard(arcade, display):
    env = ScreenEnv(screen_cfg().env, screen_cfg().inputs, FrameSpec())
    try:
        assert env.capture.rect == arcade.rect and env.raw_shape == (210, 160, 3)
        assert env.observation_space.shape == (4, 84, 84) and env.action_space.n == 4
        obs, info = env.reset()
        assert obs.shape == (4, 84, 84) and info["dropped_frames"] == 0
        assert not ball_visible(env.last_frame)  # Breakout waits for FIRE
        start = paddle_x(env.last_frame)
        for _ in range(20):
            env.step(2)  # RIGHT
        assert env.pressed() == ("right",) and len(held_keys(display)) == 1
        right = paddle_x(env.last_frame)
        for _ in range(20):
            env.step(3)  # LEFT
        left = paddle_x(env.last_frame)
        print(f"paddle x: start {start:.1f}, after RIGHT {right:.1f}, after LEFT {left:.1f}")
        assert right > start + 10 and left < right - 10
        seen = []
        for i in range(40):
            _, reward, terminated, truncated, info = env.step(1 if i < 3 else 0)  # FIRE, then wait
            seen.append(ball_visible(env.last_frame))
            assert reward == 0.0 and not terminated and info["reward_source"] == "none"
        assert any(seen), "FIRE did not launch the ball"
        assert info["frame_index"] == 80 + info["dropped_frames"]
    finally:
        env.close()
    assert held_keys(display) == [] and env.pressed() == ()


def test_the_observation_is_the_emulators_preprocessed_frame(display, capsys):
    """The arcade in this process: each emulator state is drawn, then ScreenEnv's observation of
    the window is compared with the Atari path's FrameStacker fed the emulator's frames."""
    arcade = Arcade(load_config(None, ["env.game=Breakout", "run.seed=3"]))
    try:
        env = ScreenEnv(screen_cfg().env, screen_cfg().inputs, FrameSpec())
        window = ScreenCapture(screen_cfg("env.frame_size=[0, 0]").env)  # the window's own 630x480 pixels
        try:
            ref = FrameStacker(FrameSpec(), (210, 160, 3))
            want, got = [ref.reset(arcade.frame)], [env.reset()[0]]
            big, small = Preprocessor(FrameSpec(), (630, 480, 3)), Preprocessor(FrameSpec(), (210, 160, 3))
            raw_err, direct_err = [], []
            for k, action in enumerate([1] * 3 + [2] * 40 + [0] * 30 + [3] * 50):
                arcade.step(action)
                if k % 7 == 6:  # a new state on the screen every 7 emulator frames
                    arcade.show()
                    got.append(env.step(0)[0])
                    want.append(ref.push(arcade.frame))
                    pixels = window.grab()
                    raw_err.append(np.abs(pixels.astype(int) - arcade.frame.repeat(3, 0).repeat(3, 1)).max())
                    direct_err.append(np.abs(big.one(pixels).astype(int) - small.one(arcade.frame)).mean())
            err = np.abs(np.stack(got).astype(int) - np.stack(want))
        finally:
            env.close()
            window.close()
    finally:
        arcade.close()
    with capsys.disabled():
        print(f"\n  ScreenEnv vs emulator observation over {len(got)} states: mean pixel error {err.mean():.4f}, "
              f"max {err.max()} (without env.frame_size: mean {np.mean(direct_err):.3f}); window pixels: max error {max(raw_err)}")  # fmt: skip
    assert max(raw_err) == 0  # the window shows the emulator's pixels exactly, 3x3 each
    assert err.max() == 0  # frame_size [210, 160] gives back the emulator's frame: no conversion
    assert len({w.tobytes() for w in want}) > 5  # the states really differed


def test_fixed_rate_steps_report_lateness_and_count_dropped_frames(display):
    cfg = screen_cfg("env.capture=region", "env.region=[0, 0, 64, 48]", "env.frame_size=[0, 0]", "env.fps=30")
    env = ScreenEnv(cfg.env, cfg.inputs, FrameSpec())
    period_ms = 1000 / 30
    try:
        env.reset()
        late = []
        for k in range(1, 11):
            _, _, _, _, info = env.step(0)
            late.append(info["late_ms"])
            assert 0 <= info["late_ms"] < period_ms
            assert info["frame_index"] == k + info["dropped_frames"]
        before = info
        time.sleep(3.5 / 30)  # the agent takes 3.5 periods: boundaries pass without a capture
        _, _, _, _, info = env.step(0)
        dropped = info["dropped_frames"] - before["dropped_frames"]
        print(
            f"late_ms over 10 steps: median {np.median(late):.3f}, max {max(late):.3f}; slow step dropped {dropped}"
        )
        assert dropped >= 2 and info["frame_index"] == before["frame_index"] + dropped + 1
        assert 0 <= info["late_ms"] < period_ms
        _, info = env.reset()
        assert info["dropped_frames"] == 0  # counted per episode
    finally:
        env.close()


def test_reset_close_and_a_failing_step_release_every_key(arcade, display):
    env = ScreenEnv(screen_cfg().env, screen_cfg().inputs, FrameSpec())
    try:
        env.reset()
        env.step(2)
        assert len(held_keys(display)) == 1
        env.reset()
        assert held_keys(display) == [] and env.pressed() == ()
        env.step(1)
        env.step(1)
        assert len(held_keys(display)) == 1
        rc, _, _ = arcade.stop()  # the game goes away mid-episode, the key still down
        assert rc == 0
        time.sleep(env.capture.check_every_s + 0.05)
        with pytest.raises(CaptureError, match="has closed"):
            env.step(1)
        assert held_keys(display) == [] and env.pressed() == ()
    finally:
        env.close()


class TitledWindow:
    def __init__(self, name: str, title: str):
        self.d = xdisplay.Display(name)
        s = self.d.screen()
        self.win = s.root.create_window(10, 10, 50, 50, 0, s.root_depth, X.InputOutput, X.CopyFromParent)
        self.win.set_wm_name(title)
        self.win.change_property(self.d.intern_atom("_NET_WM_NAME"), self.d.intern_atom("UTF8_STRING"), 8,
                                 title.encode())  # fmt: skip
        self.win.map()
        self.d.sync()

    def close(self):
        self.win.destroy()
        self.d.close()


def test_bad_capture_targets_fail_in_one_line_with_nothing_pressed(display, monkeypatch):
    twins = [TitledWindow(display, "twin game"), TitledWindow(display, "twin game")]
    try:
        time.sleep(0.1)
        for overrides, match in [
            (["env.window_title=no such game"], "no window titled 'no such game' .*'twin game'"),
            (["env.window_title=twin game"], "2 windows match the title 'twin game'"),
            (["env.capture=monitor", "env.monitor=7"], "env.monitor=7: no such monitor"),
            (["env.capture=region", "env.region=[5000, 5000, 10, 10]"], "outside the screen"),
        ]:
            cfg = screen_cfg(*overrides)
            with pytest.raises(CaptureError, match=match) as e:
                ScreenEnv(cfg.env, cfg.inputs, FrameSpec())
            assert "\n" not in str(e.value)
            assert held_keys(display) == []
        cfg = screen_cfg("env.capture=region", "env.region=[0, 0, 8, 8]", "inputs.keys={FIRE: [spacebar]}")
        with pytest.raises(ConfigError, match="unknown key name 'spacebar'"):
            ScreenEnv(cfg.env, cfg.inputs, FrameSpec())
    finally:
        for t in twins:
            t.close()
    monkeypatch.delenv("DISPLAY")
    with pytest.raises(CaptureError, match="DISPLAY is not set"):
        ScreenEnv(screen_cfg().env, screen_cfg().inputs, FrameSpec())
    assert held_keys(display) == []


def test_the_arcade_command_refuses_bad_input_in_one_line(display):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("DISPLAY")
    for args, env_, code, match in [
        (["--game", "Breakout"], env, 1, "no display: DISPLAY is not set"),
        (["--game", "NoSuchGame"], dict(env, DISPLAY=display), 2, "env.game='NoSuchGame'"),
        (["--set", "inputs.keys={JUMP: [space]}"], dict(env, DISPLAY=display), 2, "JUMP"),
    ]:
        p = subprocess.run([sys.executable, "-m", "rayapp.cli", "arcade", *args, "--set", "arcade.frames=60"],
                           env=env_, capture_output=True, text=True, timeout=120)  # fmt: skip
        lines = p.stderr.strip().splitlines()
        assert p.returncode == code and len(lines) == 1 and match in lines[0], p.stderr
    assert held_keys(display) == []


def test_the_rllib_env_plays_the_screen_with_the_atari_paths_spaces(display):
    """`rayapp-pixels` with env.backend=screen: the same observation and action spaces as the
    emulator's, so the same module (and a BC checkpoint) plugs in."""
    from rayapp.rl.env import ClipReward, env_config, make_pixel_env

    cfg = screen_cfg("env.capture=region", "env.region=[0, 0, 480, 630]")
    screen = make_pixel_env(env_config(cfg.env, FrameSpec(), True, cfg.inputs))
    atari = make_pixel_env(env_config(load_config(None).env, FrameSpec(), True))
    try:
        assert isinstance(screen, ClipReward) and isinstance(screen.unwrapped, ScreenEnv)
        assert screen.observation_space == atari.observation_space
        assert screen.action_space == atari.action_space
        obs, _ = screen.reset()
        assert obs.shape == (4, 84, 84)
        obs, reward, terminated, truncated, info = screen.step(1)
        assert reward == 0.0 and not terminated and info["late_ms"] >= 0 and len(held_keys(display)) == 1
    finally:
        screen.close()
        atari.close()
    assert held_keys(display) == []


def test_the_arcade_reads_held_keys_as_the_games_actions(display):
    """XTEST keys into the arcade window (in this process): each combination of held keys is the
    game's action with the most of them (SpaceInvaders: left + space is LEFTFIRE)."""
    from rayapp.envs.inputs import KeyboardBackend

    arcade = Arcade(load_config(None, ["env.game=SpaceInvaders"]))
    finder = WindowFinder()
    kb = KeyboardBackend({"NONE": [], "LEFT+FIRE": ["left", "space"], "LEFT": ["left"], "FIRE": ["space"]})
    try:
        meanings = arcade.env.unwrapped.get_action_meanings()
        assert meanings == ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]
        finder.focus(finder.find("rayapp arcade: SpaceInvaders"))
        seen = {}
        for name in ("LEFT+FIRE", "LEFT", "FIRE", "NONE"):
            kb.apply(name)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # SDL sees the keys once it has read the events
                arcade.poll()
                seen[name] = meanings[arcade.action()]
                if seen[name] == {"LEFT+FIRE": "LEFTFIRE", "NONE": "NOOP"}.get(name, name):
                    break
                time.sleep(0.01)
        assert seen == {"LEFT+FIRE": "LEFTFIRE", "LEFT": "LEFT", "FIRE": "FIRE", "NONE": "NOOP"}
    finally:
        kb.close()
        finder.close()
        arcade.close()
    assert held_keys(display) == []


def test_the_arcade_serves_the_game_api_with_the_emulators_reward(display):
    """`rayapp arcade --game-api`: the arcade answers rayapp.envs.screen.game_api's protocol as a
    game mod would: the reward summed over the frames since the last request, done when a game
    ended, score and lives; a reset request starts the game again at the arcade's next frame."""
    import threading

    from rayapp.envs.screen.game_api import GameApiReward

    cfg = load_config(None, ["env.game=Breakout", "run.seed=3", "env.max_episode_steps=100",
                             "arcade.game_api=127.0.0.1:0"])  # fmt: skip
    arcade = Arcade(cfg)
    try:
        client = GameApiReward(arcade.api.address)
        rng = np.random.default_rng(0)
        total, answered, ended = 0.0, 0.0, False
        while not ended:  # the arcade's limit: 100 steps x frameskip 4 = 400 frames
            for _ in range(10):
                r, e = arcade.step(int(rng.integers(4)))
                total, ended = total + r, ended or e
            reading = client.step(arcade.frame)
            answered += reading.reward
            assert reading.terminated == ended
            assert reading.info["lives"] == arcade.env.unwrapped.ale.lives()
        assert answered == total and arcade.summary.frames == 400
        assert client.step(arcade.frame).reward == 0.0  # nothing since the last answer
        arcade.step(1)
        got = {}
        t = threading.Thread(target=lambda: got.update(client.reset(arcade.frame)))
        t.start()
        while t.is_alive():  # the arcade's loop performs the reset the client waits for
            arcade.step(0)
            arcade.api.service(arcade.reset_game)
            time.sleep(0.01)
        assert got["score"] == 0.0 and got["lives"] == 5
        reading = client.step(arcade.frame)
        assert reading.reward == 0.0 and not reading.terminated
        client.close()
    finally:
        arcade.close()
    assert arcade.api is None
