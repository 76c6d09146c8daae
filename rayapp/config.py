"""One typed config tree.

Defaults live here, one dataclass per section, each field with its help text. A YAML file in
``configs/`` holds only what differs from these defaults (with a comment saying why), and
``--set section.key=value`` overrides either. Unknown keys and wrong types fail loudly with the
key's full path; the resolved tree is saved next to every output so a run can be rebuilt from it.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from rayapp.errors import ConfigError

__all__ = ["Config", "load_config", "config_to_dict", "config_from_dict", "dump_config", "describe_keys"]


def opt(default: Any, help: str) -> Any:
    """A config field with its help text (shown by `rayapp config keys`)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class RunConfig:
    dir: str = opt(
        "runs/default",
        "folder where a stage writes its outputs: resolved config, checkpoints, metrics, reports",
    )
    seed: int = opt(0, "base random seed; collectors and workers derive their own from it")


@dataclass
class RayConfig:
    address: str = opt(
        "",
        "Ray cluster to join ('auto', 'ray://host:10001'); empty: RAY_ADDRESS if set, else start a local Ray",
    )
    num_cpus: int | None = opt(None, "logical CPUs of a local Ray started by rayapp (null: all cores)")
    num_gpus: int | None = opt(None, "GPUs of a local Ray started by rayapp (null: detect)")
    dashboard: bool = opt(False, "start the Ray dashboard with a local Ray (http://127.0.0.1:8265)")


@dataclass
class EnvConfig:
    game: str = opt(
        "Breakout", "ALE game name (Breakout, Pong, ...) or a full gymnasium id such as 'ALE/Pong-v5'"
    )
    frameskip: int = opt(4, "emulator frames per step (the action repeats); 4 is the ALE v5 default")
    sticky_actions: float = opt(
        0.25, "probability the emulator repeats the previous action (ALE v5 default 0.25)"
    )
    max_episode_steps: int = opt(
        27000, "steps before an episode is truncated (27,000 steps = 108,000 frames, the usual cap)"
    )
    full_action_space: bool = opt(False, "use all 18 Atari actions instead of the game's minimal set")


@dataclass
class DataConfig:
    uri: str = opt(
        "",
        "the dataset a stage reads or writes: a path, file://, s3://bucket/prefix or gs://; empty: <run.dir>/replays",
    )
    max_corrupt_shards: int = opt(
        0, "corrupt shards a reader may skip (and count) before it fails; 0: fail on the first"
    )


@dataclass
class RecordConfig:
    policy: Literal["teacher", "random", "noisy_teacher"] = opt(
        "teacher",
        "who plays: the scripted teacher (reads the emulator's RAM), random, or the teacher with epsilon noise",
    )
    epsilon: float = opt(
        0.1, "noisy_teacher: probability of a uniformly random action instead of the teacher's"
    )
    episodes: int = opt(20, "episodes to record in all (0: no limit, then `steps` must be set)")
    steps: int = opt(0, "stop after this many steps in all, finishing the episodes in progress (0: no limit)")
    collectors: int = opt(2, "collector actors recording in parallel into the same dataset")
    collector_cpus: float = opt(1.0, "CPUs reserved per collector actor")
    max_collector_restarts: int = opt(2, "collectors that may die (and be replaced) before recording stops")
    append: bool = opt(False, "add episodes to an existing dataset instead of refusing to touch it")
    encoding: Literal["auto", "raw", "jpeg"] = opt(
        "auto",
        "frame encoding: raw bytes + zstd (lossless, best for small frames), jpeg (large captures); auto picks by size",
    )
    jpeg_quality: int = opt(90, "JPEG quality when encoding=jpeg")
    compression_level: int = opt(3, "zstd level for the Parquet columns")
    shard_mb: float = opt(
        64.0, "close a shard at the first episode end after it reaches this size on storage"
    )
    max_shard_mb: float = opt(
        512.0, "close a shard even mid-episode at this size (long episodes of large frames)"
    )
    row_group_rows: int = opt(1000, "rows per Parquet row group (the unit readers decode at once)")
    row_group_mb: float = opt(
        64.0, "flush a row group early when its frames reach this many megabytes in memory"
    )


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    data: DataConfig = field(default_factory=DataConfig)
    record: RecordConfig = field(default_factory=RecordConfig)

    # ---- derived values -------------------------------------------------------------------
    @property
    def data_uri(self) -> str:
        """`data.uri`, or `<run.dir>/replays` when it is empty."""
        return self.data.uri or os.path.join(self.run.dir, "replays")

    def validate(self) -> None:
        """Checks that span several keys; single-key types are checked on load."""
        r = self.record
        if r.episodes < 0 or r.steps < 0:
            raise ConfigError("record.episodes and record.steps must be >= 0")
        if r.episodes == 0 and r.steps == 0:
            raise ConfigError("record.episodes and record.steps are both 0: set at least one budget")
        if not 0.0 <= r.epsilon <= 1.0:
            raise ConfigError(f"record.epsilon must be in [0, 1], got {r.epsilon}")
        if r.collectors < 1:
            raise ConfigError(f"record.collectors must be >= 1, got {r.collectors}")
        if not 1 <= r.jpeg_quality <= 100:
            raise ConfigError(f"record.jpeg_quality must be in [1, 100], got {r.jpeg_quality}")
        if r.shard_mb <= 0 or r.max_shard_mb < r.shard_mb:
            raise ConfigError("record.shard_mb must be > 0 and record.max_shard_mb >= record.shard_mb")
        if r.row_group_rows < 1:
            raise ConfigError("record.row_group_rows must be >= 1")
        if self.env.frameskip < 1 or self.env.max_episode_steps < 1:
            raise ConfigError("env.frameskip and env.max_episode_steps must be >= 1")
        if not 0.0 <= self.env.sticky_actions <= 1.0:
            raise ConfigError(f"env.sticky_actions must be in [0, 1], got {self.env.sticky_actions}")
        if self.data.max_corrupt_shards < 0:
            raise ConfigError("data.max_corrupt_shards must be >= 0")


# ---- loading ------------------------------------------------------------------------------

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp)
        return f"a list of {_type_name(inner)}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, source: str, raw: bool) -> Any:
    """Check `value` against `tp`; `raw` values come from --set as strings."""

    def bad() -> ConfigError:
        return ConfigError(f"{source}: config key '{key}' expects {_type_name(tp)}, got {value!r}")

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (raw and str(value).strip().lower() in ("null", "none", "~")):
            if type(None) in args:
                return None
            raise bad()
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, source, raw)
            except ConfigError:
                continue
        raise bad()
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise bad()
    if origin is list:
        (inner,) = typing.get_args(tp)
        if raw and isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise bad() from None
        if not isinstance(value, list):
            raise bad()
        return [_coerce(v, inner, f"{key}[{i}]", source, False) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise bad()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad()
    if tp is dict:
        if isinstance(value, dict):
            return value
        raise bad()
    raise bad()


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown(key: str, known: list[str], source: str) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
    return ConfigError(f"{source}: unknown config key '{key}'{hint}; `rayapp config keys` lists them all")


def _apply(node: Any, data: dict[str, Any], prefix: str, source: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: '{prefix.rstrip('.') or '<root>'}' must be a mapping of keys, got {data!r}"
        )
    hints = _hints(type(node))
    names = [f.name for f in dataclasses.fields(node)]
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in names:
            raise _unknown(key, names, source)
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            _apply(getattr(node, k), v, f"{key}.", source)
        else:
            setattr(node, k, _coerce(v, tp, key, source, raw=False))


def set_key(cfg: Config, dotted: str, raw: str, source: str = "--set") -> None:
    """Apply one `section.key=value` override; `raw` is the text after '='."""
    parts = dotted.split(".")
    node: Any = cfg
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(node)]
        key = ".".join(parts[: i + 1])
        if part not in names:
            raise _unknown(key, names, source)
        tp = _hints(type(node))[part]
        last = i == len(parts) - 1
        if dataclasses.is_dataclass(tp):
            if last:
                raise ConfigError(
                    f"{source}: '{key}' is a section; set one of its keys, e.g. {key}.{dataclasses.fields(tp)[0].name}=..."
                )
            node = getattr(node, part)
            continue
        if not last:
            raise _unknown(dotted, [], source)
        setattr(node, part, _coerce(raw, tp, key, source, raw=True))


def load_config(path: str | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file's deltas, then each `section.key=value` override in order."""
    cfg = Config()
    if path:
        try:
            with open(path) as f:
                data = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(
                f"config file {path} does not exist (the configs/ folder has the shipped ones)"
            ) from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
        _apply(cfg, data, "", path)
    for ov in overrides:
        dotted, eq, raw = ov.partition("=")
        if not eq or not dotted.strip():
            raise ConfigError(
                f"--set {ov!r}: expected section.key=value, e.g. --set data.uri=s3://replays/breakout"
            )
        set_key(cfg, dotted.strip(), raw)
    cfg.validate()
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict[str, Any], source: str = "saved config") -> Config:
    """Rebuild a Config from a saved dict (a checkpoint's or a dataset's), with the same checks."""
    cfg = Config()
    _apply(cfg, data, "", source)
    return cfg


def dump_config(cfg: Config, header: str = "") -> str:
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
    return (f"# {header}\n" if header else "") + text


def describe_keys() -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) for every leaf of the tree."""
    out: list[tuple[str, str, Any, str]] = []

    def walk(node: Any, prefix: str) -> None:
        hints = _hints(type(node))
        for f in dataclasses.fields(node):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(getattr(node, f.name), f"{prefix}{f.name}.")
            else:
                out.append(
                    (prefix + f.name, _type_name(tp), getattr(node, f.name), f.metadata.get("help", ""))
                )

    walk(Config(), "")
    return out
