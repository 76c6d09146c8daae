"""The env RLlib's env runners create: the game, with exactly the frames the networks see.

Registered as `rayapp-pixels`. `env_config` carries everything a remote env runner needs to build
it alone: the `env` and `inputs` config sections, the frame spec, reward clipping. `env.backend`
chooses the game: the ALE emulator (`atari`, frames through `PixelStack`) or the screen (`screen`:
`ScreenEnv`, which captures the display of the node it runs on, `env.display` or its $DISPLAY, and
preprocesses with the same frame spec).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np

from rayapp.config import EnvConfig, InputsConfig
from rayapp.envs.atari import make_atari_env
from rayapp.envs.screen import ScreenEnv
from rayapp.envs.wrappers import PixelStack
from rayapp.errors import ConfigError
from rayapp.frames import FrameSpec

__all__ = ["ENV_NAME", "ClipReward", "ScoreInfo", "make_pixel_env", "register", "env_config"]

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
        env = ScreenEnv(env_cfg, InputsConfig(**config.get("inputs", {})), frames)
    else:
        raise ConfigError(f"env.backend={backend!r}: expected one of {', '.join(BACKENDS)}")
    env = ScoreInfo(env)
    return ClipReward(env) if config.get("clip_rewards") else env


def register() -> None:
    from ray.tune.registry import register_env

    register_env(ENV_NAME, lambda cfg: make_pixel_env(dict(cfg)))
