"""The interface every reward source of the screen path implements (rayapp.envs.screen.rewards
builds the configured one): `reset(frame)` at an episode's first frame, `step(frame)` after every
step, both with the raw RGB frame as captured."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["RewardReading", "RewardSource"]


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
