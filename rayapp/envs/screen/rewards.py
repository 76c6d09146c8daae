"""Where a screen env's reward and episode end come from (`env.reward`).

A `RewardSource` sees every captured frame (raw RGB, before preprocessing) and says the step's
reward, whether the episode ended, and extras for `info` (and the replay's extras):

- `none`: reward 0 (capture and play only; recording a person).
- `screen_score` (`ScreenScore`): the score read from `env.score_region` with the digit templates
  `rayapp calibrate-score` wrote (rayapp.envs.screen.digits); the reward is its change. A reading
  that fails gives reward 0 for that step with `info["reward_error"]` saying why and
  `info["reward_errors"]` counting them this episode (a warning is logged, at most every 10 s);
  the score is kept, so the next good reading pays the change since the last good one.
- `game_api` (rayapp.envs.screen.game_api): a game mod's JSON lines over TCP: reward, done, extras.

Episodes also end when `env.game_over_template` appears in `env.game_over_region` (`GameOver`,
normalised correlation >= `env.game_over_threshold`); ScreenEnv truncates them at
`env.max_episode_steps` and `env.time_limit_s`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import cv2
import numpy as np

from rayapp.config import EnvConfig
from rayapp.envs.screen.digits import DigitTemplates
from rayapp.envs.screen.game_api import GameApiReward
from rayapp.envs.screen.reward_source import RewardReading, RewardSource
from rayapp.errors import ConfigError

__all__ = ["RewardReading", "RewardSource", "NoReward", "ScreenScore", "GameOver", "make_reward_source"]

log = logging.getLogger(__name__)


class NoReward(RewardSource):
    """No reward and no episode end from the game (capture and play only; recording a person)."""

    name = "none"

    def step(self, frame: np.ndarray) -> RewardReading:
        return RewardReading()


class ScreenScore(RewardSource):
    """The change of the score read from the screen (see the module's docstring for failures)."""

    name = "screen_score"

    def __init__(self, templates: DigitTemplates, max_distance: float = 0.2, warn_every_s: float = 10.0):
        self.templates, self.max_distance, self.warn_every_s = templates, max_distance, warn_every_s
        self.score: int | None = None
        self.errors = 0  # this episode
        self.total_errors = 0
        self._warned = -math.inf
        self._unwarned = 0

    def _read(self, frame: np.ndarray) -> str:
        value, err = self.templates.read(frame, self.max_distance)
        if value is None:
            self.errors += 1
            self.total_errors += 1
            self._unwarned += 1
            if time.monotonic() - self._warned >= self.warn_every_s:
                log.warning("screen score: %d failed reading(s) (%d in all); the latest: %s", self._unwarned,
                            self.total_errors, err)  # fmt: skip
                self._warned, self._unwarned = time.monotonic(), 0
            return err
        self.reward = 0.0 if self.score is None else float(value - self.score)  # no baseline yet: 0
        self.score = value
        return ""

    def _info(self, err: str) -> dict[str, Any]:
        score = float("nan") if self.score is None else float(self.score)
        return {"score": score, "reward_error": err, "reward_errors": self.errors}

    def reset(self, frame: np.ndarray) -> dict[str, Any]:
        self.score, self.errors = None, 0
        return self._info(self._read(frame))

    def step(self, frame: np.ndarray) -> RewardReading:
        self.reward = 0.0
        err = self._read(frame)
        return RewardReading(self.reward, False, self._info(err))


class GameOver:
    """The episode ends when the region shows the template (normalised correlation >= threshold)."""

    def __init__(self, template: np.ndarray, region: list[int], threshold: float):
        self.region, self.threshold = tuple(int(v) for v in region), threshold
        self.template = _gray(template)
        if self.template.shape != (self.region[3], self.region[2]):
            raise ConfigError(
                f"env.game_over_template is {self.template.shape[1]}x{self.template.shape[0]} pixels, "
                f"env.game_over_region {list(region)} is {self.region[2]}x{self.region[3]}: they must match"
            )

    @classmethod
    def from_config(cls, cfg: EnvConfig) -> GameOver | None:
        if not cfg.game_over_template:
            return None
        if not cfg.game_over_region:
            raise ConfigError("env.game_over_template needs env.game_over_region: [left, top, width, height]")
        img = (
            cv2.imread(cfg.game_over_template, cv2.IMREAD_COLOR)
            if os.path.exists(cfg.game_over_template)
            else None
        )
        if img is None:
            raise ConfigError(f"env.game_over_template {cfg.game_over_template}: not a readable PNG")
        return cls(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), cfg.game_over_region, cfg.game_over_threshold)

    def score(self, frame: np.ndarray) -> float:
        """Normalised correlation of the region with the template (-1..1; off the frame: -1)."""
        left, top, w, h = self.region
        crop = frame[top : top + h, left : left + w]
        if crop.shape[:2] != (h, w):
            return -1.0
        a, b = _gray(crop), self.template
        a, b = a - a.mean(), b - b.mean()
        den = float(np.sqrt((a * a).sum() * (b * b).sum()))
        if den == 0:  # a flat picture: equal or not
            return 1.0 if np.array_equal(_gray(crop), self.template) else 0.0
        return float((a * b).sum() / den)

    def __call__(self, frame: np.ndarray) -> bool:
        return self.score(frame) >= self.threshold


def _gray(img: np.ndarray) -> np.ndarray:
    return img.mean(axis=2) if img.ndim == 3 else img.astype(np.float64)


class _WithGameOver(RewardSource):
    def __init__(self, source: RewardSource, game_over: GameOver):
        self.source, self.game_over, self.name = source, game_over, source.name

    def reset(self, frame: np.ndarray) -> dict[str, Any]:
        return self.source.reset(frame)

    def step(self, frame: np.ndarray) -> RewardReading:
        r = self.source.step(frame)
        over = self.game_over(frame)
        return RewardReading(r.reward, r.terminated or over, {**r.info, "game_over_screen": over})

    def close(self) -> None:
        self.source.close()


def make_reward_source(cfg: EnvConfig) -> RewardSource:
    game_over = GameOver.from_config(cfg)  # config errors first
    if cfg.reward == "none":
        source: RewardSource = NoReward()
    elif cfg.reward == "screen_score":
        if not cfg.score_templates:
            raise ConfigError(
                "env.reward=screen_score needs env.score_templates: run `rayapp calibrate-score --config FILE.yaml` "
                "(it writes FILE.score.npz, which the rayapp command then uses)"
            )
        source = ScreenScore(
            DigitTemplates.load(cfg.score_templates, cfg.score_region), cfg.score_max_distance
        )
    else:
        source = GameApiReward(cfg.game_api_address, cfg.game_api_timeout_s)
    return _WithGameOver(source, game_over) if game_over is not None else source
