"""Building the configured input backend (`inputs.*` keys) for a screen env, recorder or player."""

from __future__ import annotations

from typing import Any

from rayapp.envs.inputs.base import InputBackend
from rayapp.envs.inputs.gamepad import GamepadBackend, dead_zones_from_config
from rayapp.envs.inputs.gamepad_map import GamepadMapping
from rayapp.envs.inputs.keyboard import KeyboardBackend
from rayapp.envs.inputs.keys import KeyMapping
from rayapp.envs.inputs.mouse import MouseBackend
from rayapp.envs.inputs.mouse_grid import MouseGrid
from rayapp.errors import ConfigError

__all__ = ["make_input_backend", "action_nvec"]


def _mapping(cfg):
    """The pure mapping of `cfg` (an InputsConfig), checked without touching any device."""
    if cfg.backend == "keyboard":
        return KeyMapping(cfg.keys, "inputs.keys")
    if cfg.backend == "gamepad":
        dead_zones_from_config(cfg.dead_zones)
        return GamepadMapping(cfg.gamepad_actions or None, cfg.gamepad_heads or None, cfg.gamepad)
    raise ConfigError(f"inputs.backend={cfg.backend!r} has no action mapping")


def action_nvec(cfg, region: tuple[int, int, int, int] = (0, 0, 1, 1)) -> tuple[int, ...]:
    """Sizes of the action heads: (n,) for discrete actions (gymnasium Discrete(n)), several for
    factorised ones (MultiDiscrete(nvec)); checks the mapping, opens no device."""
    if cfg.backend == "mouse":
        return MouseGrid(cfg.mouse_commands, *cfg.mouse_grid, region).nvec
    m = _mapping(cfg)
    return (len(m),) if isinstance(m, KeyMapping) else m.nvec


def make_input_backend(cfg, region: tuple[int, int, int, int] | None = None, display: str | None = None,
                       sink: Any = None, device_factory: Any = None) -> InputBackend:  # fmt: skip
    """The backend `cfg.backend` names. `region` (left, top, width, height in screen pixels) is the
    capture region the mouse grid covers; `display` the X display (default $DISPLAY); `sink` and
    `device_factory` replace the system event sender or the virtual pad (tests)."""
    if cfg.backend == "none":
        raise ConfigError("inputs.backend is 'none': set keyboard, mouse or gamepad to act on a real game")
    if cfg.backend == "mouse":
        if region is None:
            raise ConfigError("the mouse backend needs the capture region its grid covers")
        if len(cfg.mouse_grid) != 2:
            raise ConfigError(f"inputs.mouse_grid must be [cols, rows], got {cfg.mouse_grid}")
        return MouseBackend(
            MouseGrid(cfg.mouse_commands, *cfg.mouse_grid, region), sink=sink, display=display
        )
    if cfg.backend == "keyboard":
        return KeyboardBackend(_mapping(cfg), sink=sink, display=display)
    return GamepadBackend(
        _mapping(cfg), dead_zones_from_config(cfg.dead_zones), device_factory=device_factory
    )
