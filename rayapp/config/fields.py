"""`opt`: a config field with its default and help text (`rayapp config keys` prints it)."""

from __future__ import annotations

from dataclasses import field
from typing import Any

__all__ = ["opt"]


def opt(default: Any, help: str, path: bool = False, not_paths: tuple[str, ...] = ()) -> Any:
    """A config field with its help text (shown by `rayapp config keys`).

    `path=True` marks a key whose value is a file location (a local path or a URI): stages that run
    in other processes or folders (Tune trials) get it made absolute first (`path_keys`);
    `not_paths` are the key's values that name no location (e.g. 'none')."""
    meta: dict[str, Any] = {"help": help}
    if path:
        meta.update(path=True, not_paths=tuple(not_paths))
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)
