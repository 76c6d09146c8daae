"""The kill switch: a hotkey read globally (the X server's key map and RECORD extension on Linux,
GetAsyncKeyState on Windows; never the game window's events), so it works whatever window has the
focus. Each press toggles: the player releases every input and pauses, the next press resumes.
A tap shorter than one step still counts on Linux (the RECORD latch)."""

from __future__ import annotations

import sys
from typing import Any

from rayapp.envs.inputs.keys import key
from rayapp.envs.inputs.listen import Win32KeyState, X11KeyState
from rayapp.errors import ConfigError

__all__ = ["KillSwitch"]


class KillSwitch:
    """`pressed()`: whether the hotkey went down since the last call (an edge, not the level)."""

    def __init__(
        self, name: str, display: str | None = None, state: Any = None, game_keys: tuple[str, ...] = ()
    ):
        self.key = key(name, "play.kill_switch")  # unknown names fail here, before anything opens
        if self.key.name in game_keys:
            raise ConfigError(
                f"play.kill_switch={name!r} is also a game key in inputs.keys: the agent would press it itself"
            )
        if state is None:
            state = Win32KeyState([self.key]) if sys.platform == "win32" else X11KeyState([self.key], display)
        self.state = state
        self._down = self.key.name in self.state.held()  # held at start: wait for its release

    def pressed(self) -> bool:
        held = self.key.name in self.state.held()
        edge = held and not self._down
        # a tap (down and up since the last read) shows as held once through the RECORD latch
        self._down = held and self._level(held)
        return edge

    def _level(self, held: bool) -> bool:
        """Whether the key is down right now (no latch), so a latched tap re-arms at once."""
        level = getattr(self.state, "held_now", None)
        return self.key.name in level() if level is not None else held

    def close(self) -> None:
        self.state.close()
