"""Errors a user can act on. The CLI prints them as one line and exits non-zero, without a traceback."""

from __future__ import annotations

__all__ = [
    "RayappError",
    "ConfigError",
    "StorageError",
    "DatasetNotFoundError",
    "ReplayFormatError",
    "CorruptShardError",
    "StageError",
]


class RayappError(Exception):
    """Base class: the message says what is wrong, where, and what to do."""

    exit_code = 1


class ConfigError(RayappError):
    """An unknown key, a wrong type or an inconsistent value in the config tree."""

    exit_code = 2


class StorageError(RayappError):
    """Storage cannot be reached, refuses the credentials, or lacks a bucket."""


class DatasetNotFoundError(StorageError):
    """No replay dataset (no dataset.json) at the URI."""


class ReplayFormatError(RayappError):
    """A dataset or shard that breaks the replay contract."""


class CorruptShardError(ReplayFormatError):
    """A shard that cannot be read or whose content disagrees with dataset.json."""

    def __init__(self, path: str, problem: str):
        self.path = path
        self.problem = problem
        super().__init__(f"corrupt shard {path}: {problem}")


class StageError(RayappError):
    """A pipeline stage failed; the message names the stage and how to resume."""
