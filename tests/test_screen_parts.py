"""The screen path's pure parts, without a display: the frame clock's schedule (on a clock the test
drives), choosing a window by title, the arcade's default keys, the config keys and the RLlib
env's backend choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from rayapp.config import load_config
from rayapp.envs.atari import make_atari_env
from rayapp.envs.screen import FrameClock, XWindow, choose_window, step_rate
from rayapp.errors import CaptureError, ConfigError
from rayapp.frames import FrameSpec
from rayapp.play.arcade import default_keys, window_title
from rayapp.rl.env import env_config, make_pixel_env

ARCADE_SCREEN = str(Path(__file__).resolve().parent.parent / "configs" / "arcade-screen.yaml")


class FakeTime:
    """A clock that moves only when slept on (and by 1 microsecond per reading, so a busy-wait ends)."""

    def __init__(self):
        self.t = 100.0
        self.slept: list[float] = []

    def now(self) -> float:
        self.t += 1e-6
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def test_the_clock_sleeps_to_each_boundary_and_never_drifts():
    ft = FakeTime()
    clock = FrameClock(50, now=ft.now, sleep=ft.sleep, spin_s=0.0)  # 20 ms periods
    t0 = clock.t0
    for k in range(1, 6):
        ft.t += 0.005  # the agent works 5 ms
        tick = clock.wait()
        assert tick.index == k and tick.dropped == 0
        assert 0 <= tick.late_ms < 0.01  # woke at the boundary (the fake clock's microsecond steps)
        assert ft.t == pytest.approx(t0 + k * 0.02, abs=1e-5)  # boundaries t0 + k * period: no drift
    assert clock.dropped == 0


def test_a_slow_step_drops_the_frames_it_missed_and_keeps_the_schedule():
    ft = FakeTime()
    clock = FrameClock(50, now=ft.now, sleep=ft.sleep, spin_s=0.0)
    t0 = clock.t0
    ft.t += 0.075  # 75 ms of work: boundaries 1, 2, 3 (20, 40, 60 ms) pass
    tick = clock.wait()
    assert (tick.index, tick.dropped) == (3, 2)  # captured at boundary 3, frames 1 and 2 dropped
    assert tick.late_ms == pytest.approx(15.0, abs=0.01)  # 75 - 60 ms: always under one period
    assert ft.slept == []  # late: no sleep
    tick = clock.wait()
    assert (tick.index, tick.dropped) == (4, 0) and ft.t == pytest.approx(t0 + 0.08, abs=1e-5)
    assert clock.dropped == 2
    clock.start()
    assert clock.dropped == 0 and clock.index == 0


def test_the_clock_spins_the_last_part_of_the_wait():
    ft = FakeTime()
    clock = FrameClock(10, now=ft.now, sleep=ft.sleep, spin_s=0.002)
    clock.wait()
    assert len(ft.slept) == 1 and ft.slept[0] == pytest.approx(0.098, abs=1e-4)  # then busy-waits 2 ms
    with pytest.raises(ValueError):
        FrameClock(0)


def test_a_title_names_one_window_exactly_or_by_a_unique_part():
    wins = [XWindow(1, "rayapp arcade: Breakout"), XWindow(2, "rayapp arcade: Breakout (2)"),
            XWindow(3, "Terminal"), XWindow(4, "")]  # fmt: skip
    assert choose_window("rayapp arcade: Breakout", wins).id == 1  # exact beats the longer title
    assert choose_window("Term", wins).id == 3
    with pytest.raises(CaptureError) as e:
        choose_window("arcade", wins)
    msg = str(e.value)
    assert "2 windows match the title 'arcade'" in msg and "0x1" in msg and "0x2" in msg and "\n" not in msg
    with pytest.raises(CaptureError) as e:
        choose_window("Pong", wins)
    assert "no window titled 'Pong'" in str(e.value) and "'Terminal'" in str(e.value)


def test_the_arcade_keys_follow_the_games_action_order():
    env = make_atari_env(load_config(None, ["env.game=Breakout"]).env)
    meanings = env.unwrapped.get_action_meanings()
    env.close()
    keys = default_keys(meanings)
    assert list(keys) == meanings == ["NOOP", "FIRE", "RIGHT", "LEFT"]
    # the shipped screen config acts with the arcade's own mapping, in the same order
    assert load_config(ARCADE_SCREEN).inputs.keys == keys
    full = default_keys(["NOOP", "UPRIGHTFIRE", "DOWNLEFT"])
    assert full == {"NOOP": [], "UPRIGHTFIRE": ["up", "right", "space"], "DOWNLEFT": ["down", "left"]}
    with pytest.raises(ConfigError, match="RESET"):
        default_keys(["RESET"])
    assert window_title("ALE/Pong-v5") == "rayapp arcade: Pong"


def test_screen_config_keys_are_checked():
    cfg = load_config(ARCADE_SCREEN)
    assert (cfg.env.backend, cfg.env.capture, cfg.env.frame_size) == ("screen", "window", [210, 160])
    assert step_rate(cfg.env) == 15 and step_rate(load_config(None, ["env.frameskip=2"]).env) == 30
    for bad, match in [
        (["env.backend=screen", "env.capture=window"], "env.window_title"),
        (["env.backend=screen", "env.capture=region"], "env.region"),
        (["env.region=[0, 0, 10]"], "env.region"),
        (["env.frame_size=[84, 0]"], "env.frame_size"),
        (["env.fps=-1"], "env.fps"),
        (["env.backend=vnc"], "env.backend"),
        (["env.reward=ocr"], "env.reward"),
        (["env.window=x"], "env.window"),  # unknown keys stay refused
        (["arcade.scale=0"], "arcade.scale"),
        (["env.backend=screen", "env.capture=monitor"], "finetune.envs_per_env_runner"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_config(None, bad)


def test_the_rllib_env_chooses_its_backend_from_the_config(monkeypatch):
    cfg = load_config(None)
    atari = make_pixel_env(env_config(cfg.env, FrameSpec(), True, cfg.inputs))
    assert atari.observation_space.shape == (4, 84, 84) and atari.action_space.n == 4
    atari.close()
    monkeypatch.delenv("DISPLAY", raising=False)
    screen = load_config(ARCADE_SCREEN)
    conf = env_config(screen.env, FrameSpec(), True, screen.inputs)
    assert conf["backend"] == "screen" and conf["inputs"]["keys"]["FIRE"] == ["space"]
    with pytest.raises(CaptureError, match="DISPLAY is not set"):  # the ScreenEnv, on a node without a display
        make_pixel_env(conf)
    reward = env_config(load_config(ARCADE_SCREEN, ["env.reward=screen_score"]).env, FrameSpec(), True)
    with pytest.raises(ConfigError, match="needs env.score_templates"):  # refused before any capture opens
        make_pixel_env(reward)
    with pytest.raises(ConfigError, match="env.backend='vnc'"):
        make_pixel_env(dict(conf, backend="vnc"))


def test_a_grab_becomes_the_same_frame_whatever_the_channel_order_of_the_work():
    """bgra_to_frame drops alpha before its area resize: bit-identical to resizing the BGRA image
    first (area averaging is per channel), on noise, where any difference would show."""
    import cv2
    import numpy as np

    from rayapp.envs.screen.capture import bgra_to_frame

    img = np.random.default_rng(0).integers(0, 256, (630, 480, 4), dtype=np.uint8)
    for size in ((210, 160), (84, 84), (100, 77)):
        ref = cv2.cvtColor(cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA), cv2.COLOR_BGRA2RGB)
        out = bgra_to_frame(img, size)
        assert out.shape == (*size, 3) and np.array_equal(out, ref), size
    assert np.array_equal(bgra_to_frame(img), img[..., 2::-1])  # no resize: just BGRA -> RGB
