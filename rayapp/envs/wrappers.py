"""Gymnasium wrappers that make an env's observations what the networks were trained on."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from rayapp.frames import FrameSpec, FrameStacker

__all__ = ["PixelStack"]


class PixelStack(gym.ObservationWrapper):
    """Raw frames -> preprocessed, stacked uint8 observations of shape (channels x k, h, w).

    The same preprocessing as the ingest pipeline, and the same stacking: at reset the stack is
    filled with the first frame, then each step pushes the newest frame. `last_frame` keeps the
    raw frame for videos.
    """

    def __init__(self, env: gym.Env, frames: FrameSpec):
        super().__init__(env)
        self.stacker = FrameStacker(frames, env.observation_space.shape)
        self.observation_space = gym.spaces.Box(0, 255, self.stacker.shape, np.uint8)
        self.last_frame: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self.last_frame = obs
        return self.stacker.reset(obs), info

    def observation(self, observation: np.ndarray) -> np.ndarray:
        self.last_frame = observation
        return self.stacker.push(observation)
