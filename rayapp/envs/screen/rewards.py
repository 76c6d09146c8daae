"""Where a screen env's reward and episode end come from (`env.reward`).

A `RewardSource` sees every captured frame (raw RGB, before preprocessing) and says the step's
reward, whether the episode ended, and extras for `info` (and the replay's extras). `none` is the
only source in this version: reward 0, episodes end at `env.max_episode_steps`. The score read
from the screen (`screen_score`: digit templates) and a game mod's JSON lines over TCP
(`game_api`) come next and plug in here; a reading that fails is to be reported in `info`
(`reward_error`), never turned into a zero reward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rayapp.config import EnvConfig
from rayapp.errors import ConfigError

__all__ = ["RewardReading", "RewardSource", "NoReward", "make_reward_source"]


@dataclass
class RewardReading:
    reward: float = 0.0
    terminated: bool = False
    info: dict[str, Any] = field(default_factory=dict)  # e.g. score, lives, reward_error


class RewardSource:
    """The interface: `reset(frame)` at an episode's first frame, `step(frame)` after every step."""

    name = "none"

    def reset(self, frame: np.ndarray) -> dict[str, Any]:
        """Extras for reset's info."""
        return {}

    def step(self, frame: np.ndarray) -> RewardReading:
        raise NotImplementedError

    def close(self) -> None:
        pass


class NoReward(RewardSource):
    """No reward and no episode end from the game (capture and play only; recording a person)."""

    name = "none"

    def step(self, frame: np.ndarray) -> RewardReading:
        return RewardReading()


def make_reward_source(cfg: EnvConfig) -> RewardSource:
    if cfg.reward == "none":
        return NoReward()
    raise ConfigError(
        f"env.reward={cfg.reward} is not available in this version (only 'none'): reading the score from the "
        "screen and a game mod's API are planned (issue 11, item 3)"
    )
