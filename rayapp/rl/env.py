"""The env RLlib's env runners create: the game, with exactly the frames the networks see.

Registered as `rayapp-pixels`. `env_config` carries everything a remote env runner needs to build
it alone: the `env` and `inputs` config sections, the frame spec, reward clipping. `env.backend`
chooses the game: the ALE emulator (`atari`, frames through `PixelStack`) or the screen (`screen`:
`ScreenEnv`, which captures the display of the node it runs on, `env.display` or its $DISPLAY, and
preprocesses with the same frame spec).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Any

import gymnasium as gym
import numpy as np

from rayapp.config import EnvConfig, InputsConfig
from rayapp.envs.atari import make_atari_env
from rayapp.envs.screen import ScreenEnv
from rayapp.envs.wrappers import PixelStack
from rayapp.errors import CaptureError, ConfigError, InputDeviceError, RayappError
from rayapp.frames import FrameSpec

__all__ = ["ENV_NAME", "MissingGame", "ClipReward", "ScoreInfo", "make_pixel_env", "register", "env_config"]

ENV_NAME = "rayapp-pixels"


class ScoreInfo(gym.Wrapper):
    """Puts the episode's raw score into the last step's info (`episode_score`), before any
    reward clipping, so training curves show game scores."""

    def reset(self, **kwargs):
        self._score = 0.0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._score += float(reward)
        if terminated or truncated:
            info = dict(info, episode_score=self._score)
        return obs, reward, terminated, truncated, info


class ClipReward(gym.RewardWrapper):
    """Rewards to their sign (-1, 0, 1), as DQN on Atari does."""

    def reward(self, reward):
        return float(np.sign(reward))


BACKENDS = ("atari", "screen")


class MissingGame(gym.Env):
    """What an env runner on a game PC without its game gets (no display, no game window, no input
    device): the spaces the trainer expects, and the PC's error at every reset and step.

    RLlib asks the first env runner for the spaces while it builds the algorithm; a runner that
    failed in its constructor would fail the whole run there. This way it fails when it samples:
    RLlib takes it out of service with the error in the driver's log, samples from the other
    game PCs, and the runner plays again once the game is back (a reset builds the real env)."""

    def __init__(self, config: dict[str, Any], error: Exception):
        self.observation_space = gym.spaces.Box(0, 255, tuple(config["obs_shape"]), np.uint8)
        self.action_space = gym.spaces.Discrete(int(config["n_actions"]))
        display = config["env"].get("display") or os.environ.get("DISPLAY", "no DISPLAY")
        self.error = f"game PC {socket.gethostname()} ({display}): {error}"
        self.config, self.game = config, None

    def _game(self):
        """The real env once the game is back (built at a reset), else None."""
        if self.game is None:
            try:
                c = self.config
                self.game = ScreenEnv(EnvConfig(**c["env"]), InputsConfig(**c.get("inputs", {})),
                                      FrameSpec.from_json(c["frames"]))  # fmt: skip
            except (CaptureError, InputDeviceError):
                return None
        return self.game

    def reset(self, *, seed=None, options=None):
        if self._game() is None:
            raise RayappError(self.error)
        return self.game.reset(seed=seed, options=options)

    def step(self, action):
        if self.game is None:
            raise RayappError(self.error)
        return self.game.step(action)

    def close(self) -> None:
        if self.game is not None:
            self.game.close()


def env_config(
    env: EnvConfig, frames: FrameSpec, clip_rewards: bool, inputs: InputsConfig | None = None
) -> dict[str, Any]:
    return {
        "backend": env.backend,
        "env": dataclasses.asdict(env),
        "inputs": dataclasses.asdict(inputs or InputsConfig()),
        "frames": frames.to_json(),
        "clip_rewards": clip_rewards,
    }


def make_pixel_env(config: dict[str, Any]) -> gym.Env:
    env_cfg = EnvConfig(**config["env"])
    backend = config.get("backend", env_cfg.backend)
    frames = FrameSpec.from_json(config["frames"])
    if backend == "atari":
        env: gym.Env = PixelStack(make_atari_env(env_cfg), frames)
    elif backend == "screen":
        try:
            env = ScreenEnv(env_cfg, InputsConfig(**config.get("inputs", {})), frames)
        except (CaptureError, InputDeviceError) as e:
            if not config.get("obs_shape"):
                raise
            env = MissingGame(config, e)
    else:
        raise ConfigError(f"env.backend={backend!r}: expected one of {', '.join(BACKENDS)}")
    env = ScoreInfo(env)
    return ClipReward(env) if config.get("clip_rewards") else env


def register() -> None:
    from ray.tune.registry import register_env

    register_env(ENV_NAME, lambda cfg: make_pixel_env(dict(cfg)))
