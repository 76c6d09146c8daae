"""`ReplayWriter`: steps in, Parquet shards out, each shard visible whole or not at all.

A writer belongs to one collector. It numbers steps itself, buffers rows into row groups, and
closes a shard at the first episode end after the shard reaches `shard_mb` or `shard_steps` (or mid-episode at
`max_shard_mb`, for very long episodes of large frames). Locally a shard is written under a
temporary name (``shards/_tmp-...``) and renamed when complete; on object storage the upload
becomes visible only when it completes. A collector killed at any point therefore loses at most
the shard in progress.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayapp.errors import ReplayFormatError
from rayapp.replay.schema import EXTRA_TYPES, DatasetInfo, encode_frame, row_schema
from rayapp.storage import Location, resolve, storage_errors

__all__ = ["ReplayWriter", "ShardWritten", "SHARDS_DIR", "TMP_PREFIX"]

log = logging.getLogger(__name__)

SHARDS_DIR = "shards"
TMP_PREFIX = "_tmp-"


@dataclass
class ShardWritten:
    uri: str
    rows: int
    bytes: int
    episodes: list[str] = field(default_factory=list)


class ReplayWriter:
    """Write one collector's episodes into shards of a dataset.

    >>> w = ReplayWriter("runs/x/replays", info, writer_id="c0")     # doctest: +SKIP
    >>> ep = w.begin_episode()
    >>> w.add_step(obs, action=1, reward=0.0, terminated=False, truncated=False, score=0.0)
    >>> w.end_episode(); w.close()
    """

    def __init__(
        self,
        dataset: str | Location,
        info: DatasetInfo,
        writer_id: str,
        *,
        shard_mb: float = 64.0,
        shard_steps: int = 20000,
        max_shard_mb: float = 512.0,
        row_group_rows: int = 1000,
        row_group_mb: float = 64.0,
        compression_level: int = 3,
        background_writes: bool = True,
    ):
        self.loc = dataset if isinstance(dataset, Location) else resolve(dataset)
        self.info = info
        self.writer_id = writer_id
        self.shard_bytes = int(shard_mb * 2**20)
        self.shard_steps = shard_steps
        self.max_shard_bytes = int(max_shard_mb * 2**20)
        self.row_group_rows = row_group_rows
        self.row_group_bytes = int(row_group_mb * 2**20)
        self.compression_level = compression_level
        self.shards: list[ShardWritten] = []
        self.steps_written = 0
        self.episodes_finished = 0
        self._seq = 0
        self._episode: str | None = None
        self._episode_count = 0
        self._step = 0
        self._open: _OpenShard | None = None
        self._reset_buffer()
        self._raw_in = 0  # frame bytes flushed into the open shard
        self._closed = False
        # Compression and upload of a row group run in one background thread (pyarrow releases the
        # GIL) while the game keeps stepping; at most one row group is in flight.
        self._pool = (
            ThreadPoolExecutor(1, thread_name_prefix=f"replay-{writer_id}") if background_writes else None
        )
        self._pending: Future | None = None
        unknown = [x for x in info.extras if x not in EXTRA_TYPES]
        if unknown:
            raise ReplayFormatError(f"unknown extras {unknown} (known: {sorted(EXTRA_TYPES)})")

    # ---- episodes --------------------------------------------------------------------------
    def begin_episode(self, episode_id: str | None = None) -> str:
        if self._episode is not None:
            raise RuntimeError(f"episode {self._episode} is still open; call end_episode() first")
        self._episode = episode_id or f"{self.writer_id}-e{self._episode_count:06d}"
        self._episode_count += 1
        self._step = 0
        return self._episode

    def add_step(
        self,
        obs: np.ndarray,
        action: int | Sequence[int] | Mapping[str, int],
        reward: float,
        terminated: bool,
        truncated: bool,
        **extras: Any,
    ) -> None:
        if self._episode is None:
            raise RuntimeError("add_step() outside an episode; call begin_episode() first")
        unknown = set(extras) - set(self.info.extras)
        if unknown:
            raise ReplayFormatError(
                f"extras {sorted(unknown)} are not declared in dataset.json (declared: {list(self.info.extras)})"
            )
        b = self._buf
        frame = encode_frame(obs, self.info.observation)
        b["episode_id"].append(self._episode)
        b["step"].append(self._step)
        b["obs"].append(frame)
        for col, a in zip(self.info.action_columns, self._actions(action)):
            b[col].append(a)
        b["reward"].append(float(reward))
        b["terminated"].append(bool(terminated))
        b["truncated"].append(bool(truncated))
        for x in self.info.extras:
            b[x].append(extras.get(x))
        self._buf_rows += 1
        self._buf_bytes += len(frame)
        self._step += 1
        if self._buf_rows >= self.row_group_rows or self._buf_bytes >= self.row_group_bytes:
            self._flush_row_group()
            if self._open is not None and self._open.size() >= self.max_shard_bytes:
                self._close_shard()  # an episode this long continues in the next shard

    def end_episode(self) -> None:
        if self._episode is None:
            return
        self._episode = None
        self.episodes_finished += 1
        self._wait()  # the size on storage must include the row group in flight
        rows = (self._open.rows if self._open else 0) + self._buf_rows
        if self._estimated_size() >= self.shard_bytes or rows >= self.shard_steps:
            self._flush_row_group()
            self._close_shard()

    def close(self) -> list[ShardWritten]:
        """Publish the shard in progress (an unfinished episode in it stays, without an end flag)."""
        if self._closed:
            return self.shards
        if self._episode is not None:
            log.warning(
                "writer %s closed inside episode %s; the episode is kept without an end flag",
                self.writer_id,
                self._episode,
            )
            self.end_episode()
        self._flush_row_group()
        self._close_shard()
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown()
        return self.shards

    def abort(self) -> None:
        """Drop the shard in progress (what a crash would lose) and keep everything published."""
        try:
            self._wait()
        except Exception:  # noqa: BLE001 - the shard is dropped anyway
            pass
        if self._pool is not None:
            self._pool.shutdown()
        if self._open is not None:
            self._open.discard()
            self._open = None
        self._reset_buffer()
        self._closed = True

    def __enter__(self) -> ReplayWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- internals -------------------------------------------------------------------------
    def _actions(self, action: Any) -> list[int]:
        controls = self.info.actions
        if isinstance(action, Mapping):
            vals = [action[c.name] for c in controls]
        elif isinstance(action, (list, tuple, np.ndarray)) and len(controls) > 1:
            vals = list(action)
        else:
            vals = [action]
        if len(vals) != len(controls):
            raise ReplayFormatError(
                f"action {action!r} has {len(vals)} parts, the dataset has {len(controls)} controls"
            )
        out = []
        for c, v in zip(controls, vals):
            v = int(v)
            if not 0 <= v < c.n:
                raise ReplayFormatError(f"action {v} outside control '{c.name}' with {c.n} values")
            out.append(v)
        return out

    def _reset_buffer(self) -> None:
        cols = [
            "episode_id",
            "step",
            "obs",
            *self.info.action_columns,
            "reward",
            "terminated",
            "truncated",
            *self.info.extras,
        ]
        self._buf: dict[str, list[Any]] = {c: [] for c in cols}
        self._buf_rows = 0
        self._buf_bytes = 0

    def _estimated_size(self) -> int:
        written = self._open.size() if self._open else 0
        ratio = (written / self._raw_in) if self._raw_in else 0.05
        return written + int(self._buf_bytes * ratio)

    def _flush_row_group(self) -> None:
        if self._buf_rows == 0:
            return
        if self._open is None:
            self._open = _OpenShard(self.loc, self.info, self.writer_id, self._seq, self.compression_level)
            self._seq += 1
            self._raw_in = 0
        schema = self._open.schema
        arrays = [pa.array(self._buf[f.name], type=f.type) for f in schema]
        table = pa.Table.from_arrays(arrays, schema=schema)
        self._wait()
        if self._pool is not None:
            self._pending = self._pool.submit(self._open.writer.write_table, table, row_group_size=len(table))
        else:
            with storage_errors(self._open.uri):
                self._open.writer.write_table(table, row_group_size=len(table))
        self._open.rows += self._buf_rows
        for ep in dict.fromkeys(self._buf["episode_id"]):
            if not self._open.episodes or self._open.episodes[-1] != ep:
                self._open.episodes.append(ep)
        self._raw_in += self._buf_bytes
        self.steps_written += self._buf_rows
        self._reset_buffer()

    def _wait(self) -> None:
        """Let the row group in flight finish; its storage error surfaces here."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            with storage_errors(self._open.uri if self._open else self.loc.uri):
                pending.result()

    def _close_shard(self) -> None:
        self._wait()
        if self._open is None:
            return
        shard = self._open.publish()
        self._open = None
        self.shards.append(shard)


class _OpenShard:
    """A shard being written: a temporary file locally, an upload in progress on object storage."""

    def __init__(self, loc: Location, info: DatasetInfo, writer_id: str, seq: int, level: int):
        name = f"{writer_id}-{seq:05d}.parquet"
        self.final = loc.join(SHARDS_DIR, name)
        self.uri = self.final.uri
        self.schema = row_schema(info, writer_id, seq)
        self.rows = 0
        self.episodes: list[str] = []
        self.fs = loc.fs
        with storage_errors(self.uri):
            if loc.is_local:
                os.makedirs(os.path.dirname(self.final.path), exist_ok=True)
                self.tmp_path: str | None = loc.join(
                    SHARDS_DIR, f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{name}"
                ).path
                self.sink = self.fs.open_output_stream(self.tmp_path)
            else:
                self.tmp_path = None
                self.sink = self.fs.open_output_stream(self.final.path)
            self.writer = pq.ParquetWriter(
                self.sink,
                self.schema,
                compression="zstd",
                compression_level=level,
                use_dictionary=["episode_id"],
                write_statistics=["episode_id", "step"],
                data_page_size=1 << 20,
            )

    def size(self) -> int:
        return self.sink.tell()

    def publish(self) -> ShardWritten:
        with storage_errors(self.uri):
            self.writer.close()
            size = self.sink.tell()
            self.sink.close()  # object storage: the upload completes here and the shard appears
            if self.tmp_path is not None:
                self.fs.move(self.tmp_path, self.final.path)
        return ShardWritten(self.uri, self.rows, size, list(self.episodes))

    def discard(self) -> None:
        try:
            self.writer.close()
            self.sink.close()
            if self.tmp_path is not None:
                self.fs.delete_file(self.tmp_path)
        except OSError:
            pass
