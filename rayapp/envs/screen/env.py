"""`ScreenEnv`: a real game on the screen as a gymnasium env.

One step is exactly one frame period (`env.fps`): the action goes to the input backend (held until
the next step), the env sleeps to the next frame boundary, captures, and preprocesses with the
same `FrameSpec` as the Atari path (rayapp.frames: gray, crop, resize, stack), so a network trained
on recordings plays live without conversion. `info` says how late the step met its boundary
(`late_ms`), the frames dropped so far this episode (`dropped_frames`: boundaries passed while the
agent was busy), the boundary's number (`frame_index`) and the reward source's extras.

Reward and episode end come from `env.reward` (rayapp.envs.screen.rewards: the score read from the
screen, a game mod's API, or none) and `env.game_over_template`; episodes are truncated at
`env.max_episode_steps` steps and `env.time_limit_s` seconds.

Inputs are released on `close()`, at every reset, at every episode end, and on any exception
inside `step` or `reset` (the input backends also release on process exit and, after
`release_on_signals()`, on SIGTERM/SIGHUP).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gymnasium as gym
import numpy as np

from rayapp.config import EnvConfig, InputsConfig
from rayapp.envs.inputs import action_nvec, make_input_backend, release_on_signals
from rayapp.envs.screen.capture import ScreenCapture
from rayapp.envs.screen.clock import FrameClock
from rayapp.envs.screen.rewards import make_reward_source
from rayapp.frames import FrameSpec, FrameStacker

__all__ = ["ScreenEnv", "step_rate"]

log = logging.getLogger(__name__)
_DEFAULT_FRAMES = FrameSpec()


def step_rate(cfg: EnvConfig) -> float:
    """Steps per second: `env.fps`, or 60 / frameskip (the Atari path's step rate) when it is 0."""
    return float(cfg.fps) if cfg.fps > 0 else 60.0 / cfg.frameskip


class ScreenEnv(gym.Env):
    """Observations: stacked preprocessed frames (`frames`), or raw RGB frames with `frames=None`
    (what a recorder stores). Actions: `Discrete(n)` for keyboard or discrete gamepad mappings,
    `MultiDiscrete` for the mouse's and factorised gamepad's heads. `sink` / `device_factory`
    replace the input devices' senders (tests); `clock` the frame clock."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, env: EnvConfig, inputs: InputsConfig, frames: FrameSpec | None = _DEFAULT_FRAMES, *,
                 sink: Any = None, device_factory: Any = None, clock: FrameClock | None = None):  # fmt: skip
        self.cfg, self.inputs_cfg = env, inputs
        self.fps = step_rate(env)
        self.render_mode = "rgb_array"
        self.inputs = None
        self.closed = False
        self.reward_source = make_reward_source(env)  # config errors first, before anything opens
        self.capture = ScreenCapture(env)  # no display, no such window: fails here, before any input exists
        try:
            region = self.capture.rect.as_tuple()
            nvec = action_nvec(inputs, region)
            self.raw_shape = self.capture.frame_shape
            self.stacker = FrameStacker(frames, self.raw_shape) if frames is not None else None
            self.inputs = make_input_backend(inputs, region=region, display=env.display or None,
                                             sink=sink, device_factory=device_factory)  # fmt: skip
        except BaseException:
            self.close()
            raise
        release_on_signals()  # SIGTERM/SIGHUP exit through the releases (main thread, default handlers only)
        self.clock = clock or FrameClock(self.fps)
        self.action_space = gym.spaces.Discrete(nvec[0]) if len(nvec) == 1 else gym.spaces.MultiDiscrete(nvec)
        shape = self.stacker.shape if self.stacker is not None else self.raw_shape
        self.observation_space = gym.spaces.Box(0, 255, shape, np.uint8)
        self.last_frame: np.ndarray | None = None
        self.steps, self.started = 0, time.monotonic()
        self.captured_at = self.sent_at = 0.0  # perf_counter of the last grab, of the last action sent

    # ---- gymnasium -----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._release()
        try:
            self.capture.locate()
            if self.cfg.capture == "window" and self.cfg.focus:
                self.capture.focus()
            self.clock.start()
            self.captured_at = time.perf_counter()
            frame = self.capture.grab()
            extras = self.reward_source.reset(frame)
        except BaseException:
            self._release()
            raise
        self.steps = 0
        self.started = time.monotonic()
        self.last_frame = frame
        obs = self.stacker.reset(frame) if self.stacker is not None else frame
        # ours win over a source's keys
        return obs, {**extras, "late_ms": 0.0, "dropped_frames": 0, "frame_index": 0, "frame_time": time.time(),
                     "reward_source": self.reward_source.name}  # fmt: skip

    def step(self, action):
        try:
            self.inputs.apply(action)
            self.sent_at = time.perf_counter()  # the player's latency: a frame's capture to its action sent
            tick = self.clock.wait()
            t = time.time()
            self.captured_at = time.perf_counter()
            frame = self.capture.grab()
            obs = self.stacker.push(frame) if self.stacker is not None else frame
            reading = self.reward_source.step(frame)
        except BaseException:
            self._release()
            raise
        self.steps += 1
        self.last_frame = frame
        limit = self.cfg.time_limit_s
        truncated = self.steps >= self.cfg.max_episode_steps or bool(
            limit and time.monotonic() - self.started >= limit
        )
        if reading.terminated or truncated:
            self._release()  # nothing stays pressed while the owner resets or stops
        info = {
            **reading.info,  # ours win over a source's keys
            "late_ms": tick.late_ms,
            "dropped_frames": self.clock.dropped,
            "frame_index": tick.index,
            "frame_time": t,
            "reward_source": self.reward_source.name,
        }
        return obs, float(reading.reward), bool(reading.terminated), truncated, info

    def render(self) -> np.ndarray | None:
        return self.last_frame

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self.inputs is not None:
                self.inputs.close()
        finally:
            self.capture.close()
            self.reward_source.close()

    # ---- helpers -------------------------------------------------------------------------------
    def _release(self) -> None:
        try:
            self.inputs.release_all()
        except Exception as e:  # the error in flight matters more; atexit tries again
            log.warning("releasing inputs failed: %s", e)

    def pressed(self) -> tuple[str, ...]:
        return self.inputs.pressed()
