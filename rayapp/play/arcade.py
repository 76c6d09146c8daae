"""`rayapp arcade`: an ALE game in a real window (pygame), played with the keyboard.

The window shows the emulator's own frame scaled up `arcade.scale` times (nearest neighbour: each
Atari pixel a scale x scale block, nothing drawn over it, so the score is there as the game draws
it) under the fixed title "rayapp arcade: <Game>" (`window_title`), at `arcade.fps` emulator frames
per second (60, the Atari's own rate, at frameskip 1). Keys map to the game's actions through the
input mapping vocabulary (`inputs.keys`, by action name; by default the arrows for directions and
space for FIRE), so a ScreenEnv acting through the keyboard backend with the same mapping plays the
same actions. A game that ends starts again. With `arcade.game_api` (`--game-api HOST:PORT`) it
also serves the game-API protocol (rayapp.play.arcade_api) with the emulator's reward, episode end,
score and lives, as a game mod would, for `env.reward: game_api`. It stops, closing the window, when the window is
closed, on Escape (unless mapped), Ctrl+C, SIGTERM, or after `arcade.frames` frames.

It is a test bed for the screen path (ScreenEnv captures this window, `env.frame_size: [210, 160]`
gives back the emulator's frame exactly) and a way for a person to play as the teacher.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass, field

import numpy as np

from rayapp.config import Config
from rayapp.envs.atari import game_name, make_atari_env
from rayapp.envs.inputs.keys import KeyMapping
from rayapp.envs.screen.clock import FrameClock
from rayapp.errors import ConfigError, InputDeviceError
from rayapp.play.arcade_api import ArcadeGameApi

__all__ = ["Arcade", "ArcadeSummary", "default_keys", "run_arcade", "window_title"]

# our key names (rayapp.envs.inputs.KEYS) that pygame spells otherwise (pygame.key.key_code)
_PYGAME_NAMES = {
    "minus": "-", "equal": "=", "bracketleft": "[", "bracketright": "]", "enter": "return",
    "lctrl": "left ctrl", "rctrl": "right ctrl", "lshift": "left shift", "rshift": "right shift",
    "lalt": "left alt", "ralt": "right alt", "semicolon": ";", "apostrophe": "'", "grave": "`",
    "backslash": "\\", "comma": ",", "period": ".", "slash": "/", "capslock": "caps lock",
    "pageup": "page up", "pagedown": "page down",
}  # fmt: skip
_DIRECTION_KEYS = (("UP", "up"), ("DOWN", "down"), ("LEFT", "left"), ("RIGHT", "right"), ("FIRE", "space"))


def window_title(game: str) -> str:
    """The arcade window's title: what `env.window_title` names to capture it."""
    return f"rayapp arcade: {game_name(game)}"


def default_keys(meanings: list[str]) -> dict[str, list[str]]:
    """ALE action meanings -> keys: the arrows for UP/DOWN/LEFT/RIGHT, space for FIRE, in the game's
    action order (so action n is the emulator's action n), e.g. Breakout: {NOOP: [], FIRE: [space],
    RIGHT: [right], LEFT: [left]}."""
    out: dict[str, list[str]] = {}
    for m in meanings:
        rest, keys = m, []
        for word, k in _DIRECTION_KEYS:
            if word in rest:
                keys.append(k)
                rest = rest.replace(word, "", 1)
        if rest not in ("", "NOOP"):
            raise ConfigError(f"no default keys for the action {m!r}: set inputs.keys")
        out[m] = keys
    return out


@dataclass
class ArcadeSummary:
    frames: int = 0
    scores: list[float] = field(default_factory=list)  # of the episodes that ended
    score: float = 0.0  # of the episode in progress
    late_frames: int = 0  # frame boundaries missed (the machine could not keep up)
    stopped_by: str = ""

    def line(self, title: str) -> str:
        ended = f", scores of ended games {self.scores}" if self.scores else ""
        return (f"{title}: {self.frames} frames, score {self.score:g}{ended}, {self.late_frames} late frames; "
                f"stopped by {self.stopped_by}")  # fmt: skip


def _import_pygame():
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")  # no sound device needed (and no ALSA noise)
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import pygame
    except ImportError:
        raise ConfigError("rayapp arcade needs pygame: pip install 'rayapp[arcade]'") from None
    return pygame


class Arcade:
    """The game and its window. `step(action)` advances one emulator frame, `show()` draws the
    current frame, `poll()` handles window events, `action()` reads the keys; `run()` is the loop."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                                                     or os.environ.get("SDL_VIDEODRIVER")):  # fmt: skip
            raise InputDeviceError(
                "rayapp arcade: no display: DISPLAY is not set (run it on a desktop, or start Xvfb and set DISPLAY=:N)"
            )
        pygame = self.pg = _import_pygame()
        self.env = make_atari_env(
            cfg.env, frameskip=1, repeat_action_probability=cfg.arcade.sticky_actions,
            max_episode_steps=cfg.env.max_episode_steps * cfg.env.frameskip,  # the same game time as the Atari path
        )  # fmt: skip
        try:
            meanings = list(self.env.unwrapped.get_action_meanings())
            self.mapping = KeyMapping(cfg.inputs.keys or default_keys(meanings), "inputs.keys")
            unknown = [n for n in self.mapping.names if n not in meanings]
            if unknown:
                raise ConfigError(
                    f"inputs.keys: {unknown} are not actions of {game_name(cfg.env.game)} ({', '.join(meanings)})"
                )
            self.actions = [meanings.index(n) for n in self.mapping.names]  # mapping order -> emulator action
            self.title = window_title(cfg.env.game)
            self.frame, _ = self.env.reset(seed=cfg.run.seed)
            h, w = self.frame.shape[:2]
            self.size = (w * cfg.arcade.scale, h * cfg.arcade.scale)
            try:
                pygame.display.init()
                self.screen = pygame.display.set_mode(self.size)
            except pygame.error as e:
                raise InputDeviceError(f"rayapp arcade: cannot open a window: {e}") from None
            pygame.display.set_caption(self.title)
            self._codes = [
                [self._keycode(k.name) for k in self.mapping.keys(i)] for i in range(len(self.mapping))
            ]
            self._quit_on_escape = "escape" not in {
                k.name for i in range(len(self.mapping)) for k in self.mapping.keys(i)
            }
        except BaseException:
            self.close()
            raise
        self.score = 0.0
        self.summary = ArcadeSummary()
        self.stop_reason = ""
        self.api = None
        if cfg.arcade.game_api:
            try:
                self.api = ArcadeGameApi(cfg.arcade.game_api, self.api_state)
            except OSError as e:
                self.close()
                raise ConfigError(
                    f"arcade.game_api={cfg.arcade.game_api!r}: cannot listen there ({e})"
                ) from None
        self.show()

    def api_state(self) -> dict:
        """What every game-API answer carries besides reward and done."""
        return {
            "score": self.score,
            "lives": int(self.env.unwrapped.ale.lives()),
            "frame": self.summary.frames,
        }

    def reset_game(self) -> None:
        """Start the game again (a game-API reset); the game in progress is dropped, not scored."""
        self.frame, _ = self.env.reset()
        self.score = self.summary.score = 0.0

    def _keycode(self, name: str) -> int:
        try:
            return self.pg.key.key_code(_PYGAME_NAMES.get(name, name))
        except ValueError:
            raise ConfigError(f"inputs.keys: the key {name!r} cannot be read in the arcade window") from None

    # ---- one frame -----------------------------------------------------------------------------
    def action(self) -> int:
        """The emulator action of the keys held now: of the actions whose keys are all held, the one
        with the most keys (LEFT and space held: LEFTFIRE where the game has it; the first on ties);
        none held: the action without keys (NOOP)."""
        pressed = self.pg.key.get_pressed()
        held = [i for i, codes in enumerate(self._codes) if codes and all(pressed[c] for c in codes)]
        if held:
            return self.actions[max(held, key=lambda i: (len(self._codes[i]), -i))]
        idle = [i for i, codes in enumerate(self._codes) if not codes]
        return self.actions[idle[0] if idle else 0]

    def step(self, action: int) -> tuple[float, bool]:
        """One emulator frame; a game that ends starts again. (reward, episode ended)."""
        self.frame, reward, terminated, truncated, _ = self.env.step(action)
        self.score += float(reward)
        self.summary.frames += 1
        if self.api is not None:
            self.api.on_frame(float(reward), bool(terminated or truncated))
        if terminated or truncated:
            self.summary.scores.append(self.score)
            print(f"{self.title}: game over, score {self.score:g}", flush=True)
            self.score = 0.0
            self.frame, _ = self.env.reset()
        self.summary.score = self.score
        return float(reward), bool(terminated or truncated)

    def show(self) -> None:
        pg = self.pg
        frame = np.ascontiguousarray(self.frame)
        surf = pg.image.frombuffer(frame.tobytes(), (frame.shape[1], frame.shape[0]), "RGB")
        self.screen.blit(pg.transform.scale(surf, self.size), (0, 0))
        pg.display.flip()  # SDL syncs with the X server: the frame is on the screen when this returns

    def poll(self) -> bool:
        """Handle window events; False once the window was closed or Escape pressed."""
        pg = self.pg
        for e in pg.event.get():
            if e.type == pg.QUIT:
                self.stop_reason = self.stop_reason or "the window closing"
            elif e.type == pg.KEYDOWN and e.key == pg.K_ESCAPE and self._quit_on_escape:
                self.stop_reason = self.stop_reason or "Escape"
        return not self.stop_reason

    # ---- the loop ------------------------------------------------------------------------------
    def run(self, frames: int = 0) -> ArcadeSummary:
        """Play at `arcade.fps` until stopped (or `frames` frames); SIGTERM stops it cleanly."""
        restore = self._catch_sigterm()
        clock = FrameClock(self.cfg.arcade.fps)
        try:
            while self.poll():
                self.step(self.action())
                if self.api is not None:
                    self.api.service(self.reset_game)
                self.show()
                if frames and self.summary.frames >= frames:
                    self.stop_reason = f"the frame limit ({frames})"
                    break
                self.summary.late_frames += clock.wait().dropped
        except KeyboardInterrupt:
            self.stop_reason = "Ctrl+C"
        finally:
            restore()
        self.summary.stopped_by = self.stop_reason
        return self.summary

    def _catch_sigterm(self):
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def stop(signum, frame):
            self.stop_reason = self.stop_reason or signal.Signals(signum).name

        sigs = [getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
        old = {s: signal.signal(s, stop) for s in sigs}
        return lambda: [signal.signal(s, h) for s, h in old.items()]

    def close(self) -> None:
        if getattr(self, "api", None) is not None:
            self.api.close()
            self.api = None
        try:
            self.env.close()
        finally:
            if self.pg.display.get_init():
                self.pg.display.quit()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_arcade(cfg: Config, frames: int | None = None) -> ArcadeSummary:
    """`rayapp arcade`: open the window, play until stopped, print what happened."""
    with Arcade(cfg) as arcade:
        keys = ", ".join(f"{n}: {'+'.join(k.name for k in arcade.mapping.keys(i)) or '-'}"
                         for i, n in enumerate(arcade.mapping.names))  # fmt: skip
        print(f"{arcade.title}: window {arcade.size[0]}x{arcade.size[1]} titled {arcade.title!r} at "
              f"{cfg.arcade.fps:g} fps; keys {keys}; Escape or closing the window quits", flush=True)  # fmt: skip
        summary = arcade.run(cfg.arcade.frames if frames is None else frames)
    print(summary.line(arcade.title), flush=True)
    return summary
