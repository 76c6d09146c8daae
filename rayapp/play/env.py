"""The player's env: the Atari emulator (paced, shown in a window) or `ScreenEnv` on any game, and
the check that a checkpoint fits it before anything is pressed.

Both give the loop the same things: stacked observations made with the checkpoint's own
`FrameSpec`, `raw_frame` (what a recording or a video stores), `inputs` (the input backend, or
None on the emulator), `captured_at` / `sent_at` (perf_counter of the last frame and of the last
action handed over: the loop's latency) and `clock` (fixed rate, or free at `play.fps: 0`).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from rayapp.config import Config
from rayapp.envs.atari import action_controls, make_atari_env
from rayapp.envs.screen.clock import FrameClock, FreeClock
from rayapp.envs.screen.env import ScreenEnv, step_rate
from rayapp.envs.wrappers import PixelStack
from rayapp.errors import ConfigError, RayappError
from rayapp.models.checkpoint import PolicyCheckpoint
from rayapp.replay.schema import ActionControl

__all__ = ["EmulatorPlay", "make_play_env", "check_fits", "play_rate"]


def play_rate(cfg: Config) -> float:
    """Steps per second of the live loop: play.fps, else the env's own rate (0: as fast as it can)."""
    if cfg.play.fps is not None:
        return float(cfg.play.fps)
    return step_rate(cfg.env)


def _clock(fps: float):
    return FreeClock() if fps == 0 else FrameClock(fps)


class EmulatorPlay:
    """The ALE emulator at the player's rate: the action goes in at the step's start, the loop
    sleeps to the frame boundary, the emulator steps; frames are shown in a pygame window."""

    def __init__(self, cfg: Config, ckpt: PolicyCheckpoint, fps: float):
        self.env = PixelStack(make_atari_env(cfg.env), ckpt.frames)
        self.action_space, self.observation_space = self.env.action_space, self.env.observation_space
        self.controls = action_controls(self.env)
        self.raw_shape = tuple(self.env.env.observation_space.shape)  # the emulator's frames under the stack
        self.inputs = None
        self.clock = _clock(fps)
        self.captured_at = self.sent_at = 0.0
        self.window = _Window(cfg) if cfg.play.window else None

    @property
    def raw_frame(self) -> np.ndarray | None:
        return self.env.last_frame

    def reset(self, seed: int | None = None):
        obs, info = self.env.reset(seed=seed)
        self.clock.start()
        self.captured_at = time.perf_counter()
        self._show()
        return obs, {**info, "late_ms": 0.0, "dropped_frames": 0, "frame_index": 0}

    def step(self, action):
        self.sent_at = time.perf_counter()
        tick = self.clock.wait()
        obs, r, te, tr, info = self.env.step(action)
        self.captured_at = time.perf_counter()
        self._show()
        return obs, r, te, tr, {**info, "late_ms": tick.late_ms, "dropped_frames": self.clock.dropped,
                                "frame_index": tick.index}  # fmt: skip

    def _show(self) -> None:
        if self.window is not None and not self.window.show(self.env.last_frame):
            raise KeyboardInterrupt  # the window was closed: stop like Ctrl+C

    def describe_inputs(self, action) -> str:
        labels = self.controls[0].labels
        return labels[action] if labels and isinstance(action, int) else str(action)

    def release(self) -> None:
        pass

    def close(self) -> None:
        try:
            self.env.close()
        finally:
            if self.window is not None:
                self.window.close()


class _Window:
    """The emulator's frames in a pygame window (`play.scale` pixels per emulator pixel)."""

    def __init__(self, cfg: Config):
        os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
        try:
            import pygame
        except ImportError:
            raise ConfigError(
                "play.window needs pygame: pip install 'rayapp[arcade]' (or --set play.window=false)"
            ) from None
        self.pg, self.scale = pygame, cfg.play.scale
        try:
            pygame.display.init()
        except pygame.error as e:
            raise ConfigError(
                f"play.window: no display to open a window on ({e}); set play.window=false"
            ) from None
        pygame.display.set_caption(f"rayapp play: {cfg.env.game}")
        self.screen = None

    def show(self, frame: np.ndarray) -> bool:
        pg = self.pg
        for event in pg.event.get():
            if event.type == pg.QUIT:
                return False
        h, w = frame.shape[:2]
        if self.screen is None:
            self.screen = pg.display.set_mode((w * self.scale, h * self.scale))
        surf = pg.surfarray.make_surface(np.ascontiguousarray(frame.swapaxes(0, 1)))
        self.screen.blit(pg.transform.scale(surf, self.screen.get_size()), (0, 0))
        pg.display.flip()
        return True

    def close(self) -> None:
        if self.pg.display.get_init():
            self.pg.display.quit()


class ScreenPlay:
    """`ScreenEnv` with the player's clock; the same attributes as `EmulatorPlay`."""

    def __init__(self, cfg: Config, ckpt: PolicyCheckpoint, fps: float, **devices: Any):
        self.env = ScreenEnv(cfg.env, cfg.inputs, ckpt.frames, clock=_clock(fps), **devices)
        self.action_space, self.observation_space = self.env.action_space, self.env.observation_space
        self.inputs = self.env.inputs
        self.clock = self.env.clock
        self.raw_shape = tuple(self.env.raw_shape)
        self.controls = _screen_controls(self.inputs)

    raw_frame = property(lambda self: self.env.last_frame)
    captured_at = property(lambda self: self.env.captured_at)
    sent_at = property(lambda self: self.env.sent_at)

    def reset(self, seed: int | None = None):
        return self.env.reset(seed=seed)

    def step(self, action):
        return self.env.step(action)

    def describe_inputs(self, action) -> str:
        return self.inputs.describe()

    def release(self) -> None:
        self.env._release()

    def close(self) -> None:
        self.env.close()


def make_play_env(cfg: Config, ckpt: PolicyCheckpoint, **devices: Any):
    fps = play_rate(cfg)
    return (
        ScreenPlay(cfg, ckpt, fps, **devices) if cfg.env.backend == "screen" else EmulatorPlay(cfg, ckpt, fps)
    )


def _nvec(space) -> tuple[int, ...]:
    return (int(space.n),) if hasattr(space, "n") else tuple(int(n) for n in space.nvec)


def check_fits(ckpt: PolicyCheckpoint, env, cfg: Config, what: str = "checkpoint") -> None:
    """Frame shape, action space and mapping of `ckpt` against the env: one line naming both."""
    problems = []
    obs = tuple(env.observation_space.shape)
    if tuple(ckpt.spec.input_shape) != obs:
        problems.append(
            f"frames {'x'.join(map(str, ckpt.spec.input_shape))} vs the env's {'x'.join(map(str, obs))}"
        )
    theirs = tuple(n for _, n in ckpt.spec.controls)
    ours = _nvec(env.action_space)
    if theirs != ours:
        problems.append(f"actions {list(theirs)} vs the env's {list(ours)} ({_mapping_name(cfg)})")
    elif len(ours) == 1:
        labels = list(ckpt.game.get("actions", [[]])[0] or [])
        mine = _action_names(cfg, env)
        if labels and mine and labels != mine:
            problems.append(f"actions {labels} vs {mine} ({_mapping_name(cfg)})")
    if problems:
        raise RayappError(
            f"{what} {ckpt.path} does not fit the env: " + "; ".join(problems) + "; nothing was pressed"
        )


def _mapping_name(cfg: Config) -> str:
    if cfg.env.backend != "screen":
        return f"the emulator's {cfg.env.game}"
    return {"keyboard": "inputs.keys", "mouse": "inputs.mouse_commands x inputs.mouse_grid",
            "gamepad": "inputs.gamepad_actions / gamepad_heads"}.get(cfg.inputs.backend, "inputs")  # fmt: skip


def _action_names(cfg: Config, env) -> list[str]:
    if cfg.env.backend != "screen":
        return list(env.controls[0].labels)
    m = getattr(env.inputs, "mapping", None)
    names = getattr(m, "names", None)
    return list(names) if names and getattr(m, "discrete", True) else []


def _screen_controls(inputs) -> tuple:
    """The dataset's action controls for what the backend acts with (the screen recorder's)."""
    if inputs.kind == "mouse":
        g = inputs.grid
        return (ActionControl("command", len(g.commands), tuple(c.name for c in g.commands)),
                ActionControl("x", g.cols), ActionControl("y", g.rows))  # fmt: skip
    m = inputs.mapping
    if getattr(m, "discrete", True):
        return (ActionControl("action", len(m.names), tuple(m.names)),)
    return tuple(ActionControl(h, len(c)) for h, c in m.heads.items())
