"""Reading a config: defaults, then a YAML file's deltas, then `--set section.key=value` overrides,
each value checked against its field's type; and writing one back (YAML, dicts, key listings)."""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from typing import Any, Literal

import yaml

from rayapp.config.tree import Config
from rayapp.errors import ConfigError

__all__ = [
    "load_config",
    "set_key",
    "config_to_dict",
    "config_from_dict",
    "dump_config",
    "describe_keys",
    "path_keys",
]

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
        if raw and isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise bad() from None
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


def path_keys() -> dict[str, tuple[str, ...]]:
    """Every key marked `path=True`, with its values that name no location."""
    out: dict[str, tuple[str, ...]] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
            elif f.metadata.get("path"):
                out[prefix + f.name] = f.metadata["not_paths"]

    walk(Config, "")
    return out


def absolute(value: Any, not_paths: tuple[str, ...] = ()) -> Any:
    """A path-valued config value that no longer depends on the working directory: local paths
    made absolute, URIs (s3://, file://, ...) and empty or special values ('none') as they are."""
    if not isinstance(value, str) or not value or "://" in value or value.lower() in not_paths:
        return value
    return os.path.abspath(os.path.expanduser(value))


def absolute_paths(cfg: Config) -> Config:
    """A copy of `cfg` with every path-valued key (`path_keys`) made absolute: for processes with
    another working directory (Tune's trials, Ray Train's workers and controller), where a
    relative path would name something else."""
    out = config_from_dict(config_to_dict(cfg))
    for key, not_paths in path_keys().items():
        section, name = key.split(".")
        node = getattr(out, section)
        setattr(node, name, absolute(getattr(node, name), not_paths))
    return out
