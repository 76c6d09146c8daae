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
    "InputDeviceError",
    "CaptureError",
    "ScoreCalibrationError",
    "GameApiError",
    "find_error",
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


class InputDeviceError(RayappError):
    """An input device (X display, XTEST, SendInput, a virtual gamepad) cannot be opened or used."""


class CaptureError(RayappError):
    """The screen, monitor, region or window to capture cannot be found or read."""


class ScoreCalibrationError(ConfigError):
    """The score region cannot be read, or labelled frames disagree with what it shows."""


class GameApiError(RayappError):
    """A game mod's reward API refuses the connection, stops answering or answers nonsense."""


_RAY_WRAPPERS = ("RayTaskError", "RayActorError", "RayError", "RayTrainError")
_RAY_DATA_RETRY_NOTE = "\nFailed to "


def find_error(exc: BaseException, types: type | tuple[type, ...]) -> BaseException | None:
    """The original `types` error inside what Ray wrapped around it, or None.

    Ray Train and Ray Data wrap a worker's exception several times over (`WorkerGroupError`
    .worker_failures, `ControllerError.controller_failure`, `RayTaskError.cause`, Ray Train's
    `UserExceptionWithTraceback`, whose private `_base_exc` is the only way to the exception a worker
    raised: tests/test_storage_outage.py::test_find_error_unwraps_ray_train_and_ray_data fails if it moves). Ray's dual-class copies (a RayTaskError that is
    also a StorageError, whose str() is a whole traceback) are skipped for the original.
    """
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen or not isinstance(e, BaseException):
            continue
        seen.add(id(e))
        if isinstance(e, types) and not any(c.__name__ in _RAY_WRAPPERS for c in type(e).__mro__):
            if e.args and isinstance(e.args[0], str) and _RAY_DATA_RETRY_NOTE in e.args[0]:
                # Ray Data appends the story of its own retries to the message of the exception a
                # task raised (ray.data._internal.util); ours are one line and say what to do
                e.args = (e.args[0].split(_RAY_DATA_RETRY_NOTE, 1)[0], *e.args[1:])
            return e
        todo += [
            e.__cause__,
            e.__context__,
            getattr(e, "cause", None),
            getattr(e, "controller_failure", None),
        ]
        todo.append(getattr(e, "_base_exc", None))
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            todo += list(failures.values())
    return None
