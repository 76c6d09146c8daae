"""`env.reward: game_api` (rayapp.envs.screen.game_api): a game mod's JSON lines over TCP, here
the fake server's (rayapp.envs.screen.fake_game_api): rewards, episode ends and state reach a
ScreenEnv's step; a mod that refuses, stops answering, answers nonsense or hangs up is one error
line naming its address, with nothing left pressed on the X server (Xvfb)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from conftest import held_keys

from rayapp.config import load_config
from rayapp.envs.screen.fake_game_api import FakeGameApi
from rayapp.errors import ConfigError, GameApiError

ROOT = Path(__file__).resolve().parent.parent
ARCADE_SCREEN = str(ROOT / "configs" / "arcade-screen.yaml")


def region_cfg(*overrides: str):
    return load_config(ARCADE_SCREEN, ["env.capture=region", "env.region=[0, 0, 32, 24]", "env.frame_size=[0, 0]",
                                       "env.fps=30", *overrides])  # fmt: skip


def test_the_game_api_gives_rewards_episode_ends_and_state(xdisplay_):
    from rayapp.envs.screen import ScreenEnv
    from rayapp.envs.screen.fake_game_api import default_script
    from rayapp.frames import FrameSpec

    with FakeGameApi(default_script(reward_every=3, episode_steps=10)) as server:
        cfg = region_cfg("env.reward=game_api", f"env.game_api_address={server.address}")
        env = ScreenEnv(cfg.env, cfg.inputs, FrameSpec())
        try:
            _, info = env.reset()
            assert info["reward_source"] == "game_api" and info["position"] == [0.0, 0.0, 0.0]
            rewards, ends = [], []
            for _ in range(10):
                _, r, terminated, truncated, info = env.step(1)
                rewards.append(r)
                ends.append(terminated)
            assert rewards == [0, 0, 1, 0, 0, 1, 0, 0, 1, 0] and ends == [False] * 9 + [True]
            assert info["speed"] == 5.0 and info["position"] == [10.0, 20.0, 0.0] and "reward" not in info
            assert held_keys(xdisplay_) == []  # released at the episode's end
            assert server.requests[:2] == [{"op": "reset"}, {"op": "step", "step": 1}]
            env.reset()
            cfg.env.time_limit_s = 0.2  # 6 steps of 1/30 s
            steps, truncated = 0, False
            while not truncated:
                _, _, _, truncated, _ = env.step(0)
                steps += 1
            assert 5 <= steps <= 7
        finally:
            env.close()


def test_a_game_api_that_refuses_or_stops_answering_fails_in_one_line_with_nothing_pressed(xdisplay_):
    from rayapp.envs.screen import ScreenEnv
    from rayapp.frames import FrameSpec

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    cfg = region_cfg("env.reward=game_api", f"env.game_api_address=127.0.0.1:{port}")
    with pytest.raises(GameApiError, match=f"the game API at 127.0.0.1:{port} refused the connection") as e:
        ScreenEnv(cfg.env, cfg.inputs, FrameSpec())
    assert "\n" not in str(e.value) and "fake_game_api" in str(e.value)
    assert held_keys(xdisplay_) == []

    with FakeGameApi(stall_after=3) as server:  # reset and two steps, then silence
        cfg = region_cfg(
            "env.reward=game_api", f"env.game_api_address={server.address}", "env.game_api_timeout_s=0.3"
        )
        env = ScreenEnv(cfg.env, cfg.inputs, FrameSpec())
        try:
            env.reset()
            env.step(1)
            env.step(1)
            assert len(held_keys(xdisplay_)) == 1  # FIRE's space, held
            with pytest.raises(
                GameApiError, match=f"the game API at {server.address} did not answer within 0.3 s"
            ) as e:
                env.step(1)
            assert "\n" not in str(e.value)
            assert held_keys(xdisplay_) == [] and env.pressed() == ()
            server.stall_after = None  # the mod recovers: the next reset connects again
            _, info = env.reset()
            assert info["speed"] == 0.0 and env.step(0)[4]["position"] == [1.0, 2.0, 0.0]
        finally:
            env.close()


def test_a_game_api_that_answers_nonsense_or_hangs_up_is_named():
    from rayapp.envs.screen.game_api import GameApiReward

    frame = np.zeros((4, 4, 3), np.uint8)
    for answer, match in [
        ([1, 2], "answered a line that is not a JSON object: b'\\[1, 2\\]"),
        ({"reward": "lots"}, "sent a reward that is not a number: 'lots'"),
        ({"reward": 1, "done": "yes"}, "sent a done that is not true or false: 'yes'"),
    ]:
        with FakeGameApi(lambda req, a=answer: a if req["op"] == "step" else {}) as server:
            src = GameApiReward(server.address, 1.0)
            try:
                assert src.reset(frame) == {}
                with pytest.raises(GameApiError, match=match) as e:
                    src.step(frame)
                assert str(e.value).startswith(f"the game API at {server.address} ") and "\n" not in str(
                    e.value
                )
            finally:
                src.close()
    with FakeGameApi() as server:
        src = GameApiReward(server.address, 1.0)
        server.close()  # the mod goes away
        with pytest.raises(GameApiError, match="closed the connection|failed"):
            src.reset(frame)
        src.close()
    with pytest.raises(ConfigError, match="host:port"):
        GameApiReward("localhost", 1.0)
