"""Real Atari games from ale-py (the ROMs ship in the package): creation and the dataset description."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from rayapp.config import EnvConfig
from rayapp.errors import ConfigError
from rayapp.replay.schema import ActionControl, DatasetInfo, ObservationSpec, choose_encoding

__all__ = ["env_id", "make_atari_env", "action_controls", "dataset_info_for"]

_registered = False


def _register() -> None:
    global _registered
    if not _registered:
        import ale_py

        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)  # no banner per emulator
        gym.register_envs(ale_py)
        _registered = True


def env_id(game: str) -> str:
    """'Breakout' -> 'ALE/Breakout-v5'; a full id is kept as is."""
    return game if "/" in game or game.endswith(("-v4", "-v5")) else f"ALE/{game}-v5"


def game_name(game: str) -> str:
    """'ALE/Pong-v5' -> 'Pong'."""
    return game.split("/")[-1].split("-v")[0]


def make_atari_env(cfg: EnvConfig, render_mode: str | None = None, **overrides: Any) -> gym.Env:
    """The raw emulator env: RGB 210x160 frames, ALE frameskip and sticky actions, a time limit."""
    _register()
    kwargs: dict[str, Any] = {
        "frameskip": cfg.frameskip,
        "repeat_action_probability": cfg.sticky_actions,
        "full_action_space": cfg.full_action_space,
        "max_episode_steps": cfg.max_episode_steps,
    }
    kwargs.update(overrides)
    if render_mode:
        kwargs["render_mode"] = render_mode
    try:
        return gym.make(env_id(cfg.game), **kwargs)
    except gym.error.Error as e:
        games = sorted({game_name(k) for k in gym.registry if k.startswith("ALE/")})
        raise ConfigError(
            f"env.game={cfg.game!r}: {e} (ALE games include {', '.join(games[:12])}, ...)"
        ) from None


def action_controls(env: gym.Env) -> tuple[ActionControl, ...]:
    space = env.action_space
    if isinstance(space, gym.spaces.Discrete):
        labels: tuple[str, ...] = ()
        meanings = getattr(env.unwrapped, "get_action_meanings", None)
        if meanings is not None:
            labels = tuple(meanings())
        return (ActionControl("action", int(space.n), labels),)
    if isinstance(space, gym.spaces.MultiDiscrete):
        names = getattr(env.unwrapped, "control_names", None) or [f"c{i}" for i in range(len(space.nvec))]
        return tuple(ActionControl(n, int(k)) for n, k in zip(names, space.nvec))
    raise ConfigError(
        f"action space {space} is not discrete; rayapp records discrete or factorised discrete controls"
    )


def dataset_info_for(
    env: gym.Env,
    cfg: EnvConfig,
    encoding: str,
    jpeg_quality: int,
    extras: tuple[str, ...],
    recorded_by: dict[str, Any],
) -> DatasetInfo:
    shape = tuple(int(x) for x in env.observation_space.shape)
    return DatasetInfo(
        game=game_name(cfg.game),
        env_id=env_id(cfg.game),
        observation=ObservationSpec(
            shape, str(env.observation_space.dtype), choose_encoding(shape, encoding), jpeg_quality
        ),
        actions=action_controls(env),
        frame_rate=60.0 / cfg.frameskip,
        extras=extras,
        recorded_by=recorded_by,
    )
