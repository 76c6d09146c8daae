"""Creating a dataset (its `dataset.json`) and recording what each recording session did."""

from __future__ import annotations

import json
from typing import Any

import pyarrow.fs as pafs

from rayapp.errors import RayappError, ReplayFormatError, StorageError
from rayapp.replay.reader import ReplayDataset
from rayapp.replay.schema import DatasetInfo
from rayapp.storage import Location, exists, resolve, storage_errors, write_bytes_atomic

__all__ = ["create_dataset", "write_session"]


def _check_bucket(loc: Location) -> None:
    if loc.scheme == "file":
        return
    bucket = loc.path.split("/", 1)[0]
    with storage_errors(loc.uri):
        found = loc.fs.get_file_info(bucket).type != pafs.FileType.NotFound
    if not found:
        raise StorageError(
            f"{loc.uri}: bucket '{bucket}' does not exist; create it first (e.g. `aws s3 mb {loc.scheme}://{bucket}`)"
        )


def create_dataset(
    uri: str | Location, info: DatasetInfo, append: bool = False, append_key: str = "record.append"
) -> DatasetInfo:
    """Write `dataset.json` for a new dataset, or check that `info` may be appended to an existing one.

    `append_key` is the config key that allows appending, named in the refusal (the writing stage's).
    Returns the description the writers must use (the existing one when appending).
    """
    loc = uri if isinstance(uri, Location) else resolve(uri)
    _check_bucket(loc)
    meta = loc.join("dataset.json")
    if exists(meta):
        existing = ReplayDataset(loc)
        if not append and (existing.shards or existing.info.compatible_with(info)):
            raise RayappError(
                f"{loc.uri} already holds a dataset ({len(existing.shards)} shards); set {append_key}=true to add "
                f"episodes to it, or choose another data.uri"
            )
        problems = existing.info.compatible_with(info)
        missing = [x for x in info.extras if x not in existing.info.extras]
        if missing:
            problems.append(f"extras {missing} not in the dataset")
        if problems:
            raise ReplayFormatError(f"cannot append to {loc.uri}: {'; '.join(problems)}")
        return existing.info
    write_bytes_atomic(meta, info.dumps().encode())
    return info


def write_session(uri: str | Location, session: str, summary: dict[str, Any]) -> str:
    """`sessions/<id>.json`: one file per recording session (no shared file to race on)."""
    loc = uri if isinstance(uri, Location) else resolve(uri)
    target = loc.join("sessions", f"{session}.json")
    write_bytes_atomic(target, (json.dumps(summary, indent=2) + "\n").encode())
    return target.uri
