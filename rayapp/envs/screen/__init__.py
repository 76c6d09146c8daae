"""The screen path: a real game on the screen as a gymnasium env (`ScreenEnv`), with capture
(mss: a monitor, a region, or a window found by title), fixed-rate stepping, the Atari path's
preprocessing, an input backend (rayapp.envs.inputs) and a reward source (`env.reward`: the score
read from the screen with calibrated digit templates, a game mod's JSON lines over TCP, or none).
mss and python-xlib are imported only when a capture opens."""

from rayapp.envs.screen.capture import ScreenCapture
from rayapp.envs.screen.clock import FrameClock, Tick
from rayapp.envs.screen.digits import DigitTemplates
from rayapp.envs.screen.env import ScreenEnv, step_rate
from rayapp.envs.screen.rewards import (
    GameOver,
    NoReward,
    RewardReading,
    RewardSource,
    ScreenScore,
    make_reward_source,
)
from rayapp.envs.screen.windows import Rect, WindowFinder, XWindow, choose_window

__all__ = [
    "DigitTemplates",
    "GameOver",
    "ScreenScore",
    "FrameClock",
    "NoReward",
    "Rect",
    "RewardReading",
    "RewardSource",
    "ScreenCapture",
    "ScreenEnv",
    "Tick",
    "WindowFinder",
    "XWindow",
    "choose_window",
    "make_reward_source",
    "step_rate",
]
