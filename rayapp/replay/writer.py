"""`ReplayWriter`: steps in, Parquet shards out, each shard visible whole or not at all.

A writer belongs to one collector. It numbers steps itself, buffers rows into row groups, and
closes a shard at the first episode end after the shard reaches `shard_mb` or `shard_steps` (or mid-episode at
`max_shard_mb`, for very long episodes of large frames). Locally a shard is written under a
temporary name (``shards/_tmp-...``) and renamed when complete; for object storage it is written
to a spool file on local disk and, when complete, uploaded and moved to its name (see `rayapp.replay.shard_file`
for why). A collector killed at any point therefore loses at most the shard in progress, `abort()`
makes nothing visible, and a step the writer refuses (a bad action, frame or extra) changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

from rayapp.errors import ReplayFormatError, StorageError
from rayapp.replay.schema import EXTRA_TYPES, DatasetInfo, encode_frame
from rayapp.replay.shard_file import SHARDS_DIR, TMP_PREFIX, OpenShard, ShardWritten
from rayapp.storage import Location, resolve, storage_errors

__all__ = ["ReplayWriter", "ShardWritten", "SHARDS_DIR", "TMP_PREFIX"]

log = logging.getLogger(__name__)


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
        unknown = [x for x in info.extras if x not in EXTRA_TYPES]
        if unknown:
            raise ReplayFormatError(f"unknown extras {unknown} (known: {sorted(EXTRA_TYPES)})")
        self._extras = [(x, _converter(x, EXTRA_TYPES[x])) for x in info.extras]
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
        self._open: OpenShard | None = None
        self._reset_buffer()
        self._raw_in = 0  # frame bytes flushed into the open shard
        self._closed = False
        # Compression and upload of a row group run in one background thread (pyarrow releases the
        # GIL) while the game keeps stepping; at most one row group is in flight.
        self._pool = (
            ThreadPoolExecutor(1, thread_name_prefix=f"replay-{writer_id}") if background_writes else None
        )
        self._pending: Future | None = None
        self._failed: str | None = None  # set when a storage error lost the shard in progress

    # ---- episodes --------------------------------------------------------------------------
    def begin_episode(self, episode_id: str | None = None) -> str:
        if self._failed:
            raise StorageError(self._failed)
        if self._episode is not None:
            raise RuntimeError(f"episode {self._episode} is still open; call end_episode() first")
        self._episode = episode_id or f"{self.writer_id}-e{self._episode_count:06d}"
        self._episode_count += 1
        self._step = 0
        return self._episode

    def add_step(
        self,
        obs: np.ndarray,
        action: int | Sequence[int] | Mapping[str, int] | None,
        reward: float,
        terminated: bool,
        truncated: bool,
        **extras: Any,
    ) -> None:
        if self._failed:
            raise StorageError(self._failed)
        if self._episode is None:
            raise RuntimeError("add_step() outside an episode; call begin_episode() first")
        unknown = set(extras) - set(self.info.extras)
        if unknown:
            raise ReplayFormatError(
                f"extras {sorted(unknown)} are not declared in dataset.json (declared: {list(self.info.extras)})"
            )
        # Every field is checked and converted before anything is buffered: a refused step leaves
        # the columns of even length and the writer as it was.
        frame = encode_frame(obs, self.info.observation)
        actions = self._actions(action)
        reward = _to_float("reward", reward)
        values = [convert(extras.get(x)) for x, convert in self._extras]
        b = self._buf
        b["episode_id"].append(self._episode)
        b["step"].append(self._step)
        b["obs"].append(frame)
        for col, a in zip(self.info.action_columns, actions):
            b[col].append(a)
        b["reward"].append(reward)
        b["terminated"].append(bool(terminated))
        b["truncated"].append(bool(truncated))
        for (x, _), v in zip(self._extras, values):
            b[x].append(v)
        self._buf_rows += 1
        self._buf_bytes += len(frame)
        self._step += 1
        if self._buf_rows >= self.row_group_rows or self._buf_bytes >= self.row_group_bytes:
            with self._storage():
                self._flush_row_group()
                if self._open is not None and self._open.size() >= self.max_shard_bytes:
                    self._close_shard()  # an episode this long continues in the next shard

    def end_episode(self) -> None:
        if self._episode is None:
            return
        self._episode = None
        self.episodes_finished += 1
        with self._storage():
            self._wait()  # the size on storage must include the row group in flight
            rows = (self._open.rows if self._open else 0) + self._buf_rows
            if self._estimated_size() >= self.shard_bytes or rows >= self.shard_steps:
                self._flush_row_group()
                self._close_shard()

    def close(self) -> list[ShardWritten]:
        """Publish the shard in progress (an unfinished episode in it stays, without an end flag).

        After a storage error (raised before, by a step) there is nothing left to publish: the
        shards published before it are returned.
        """
        if self._closed:
            return self.shards
        try:
            if self._failed is None:
                if self._episode is not None:
                    log.warning(
                        "writer %s closed inside episode %s; the episode is kept without an end flag",
                        self.writer_id,
                        self._episode,
                    )
                    self.end_episode()
                with self._storage():
                    self._flush_row_group()
                    self._close_shard()
        finally:
            self._closed = True
            if self._pool is not None:
                self._pool.shutdown()
        return self.shards

    def abort(self) -> None:
        """Drop the shard in progress (what a crash would lose) and keep everything published.

        Nothing of the dropped shard becomes visible on any storage: it only ever existed locally.
        """
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
    @contextlib.contextmanager
    def _storage(self) -> Iterator[None]:
        """A storage error inside loses the shard in progress: drop its rest, refuse further steps
        (continuing would leave a gap inside an episode), and let the error through."""
        try:
            yield
        except StorageError as e:
            self._failed = f"writer {self.writer_id} stopped after a storage error: {e}"
            if self._pending is not None:  # never close the Parquet writer under a write in flight
                with contextlib.suppress(Exception):
                    self._pending.result()
                self._pending = None
            if self._open is not None:
                self._open.discard()
                self._open = None
            self._reset_buffer()
            self._episode = None
            raise

    def _actions(self, action: Any) -> list[int]:
        controls = self.info.actions
        if not controls:  # an action-less dataset (unlabelled video)
            if action is not None:
                raise ReplayFormatError(f"action {action!r} given to a dataset without actions (unlabelled video)")
            return []
        if action is None:
            raise ReplayFormatError(f"a step without an action, but the dataset has controls {[c.name for c in controls]}")
        if isinstance(action, Mapping):
            missing = [c.name for c in controls if c.name not in action]
            if missing:
                raise ReplayFormatError(f"action {action!r} lacks control(s) {missing}")
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
        for c, raw in zip(controls, vals):
            v = _to_int(f"action {action!r} for control '{c.name}'", raw)
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
            self._open = OpenShard(self.loc, self.info, self.writer_id, self._seq, self.compression_level)
            self._seq += 1
            self._raw_in = 0
        schema = self._open.schema
        arrays = [pa.array(self._buf[f.name], type=f.type) for f in schema]
        table = pa.Table.from_arrays(arrays, schema=schema)
        self._wait()
        if self._pool is not None:
            self._pending = self._pool.submit(self._open.writer.write_table, table, row_group_size=len(table))
        else:
            with storage_errors(self._open.where):
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
            with storage_errors(self._open.where if self._open else self.loc.uri):
                pending.result()

    def _close_shard(self) -> None:
        self._wait()
        if self._open is None:
            return
        shard = self._open.publish(open_episode=self._episode)
        self._open = None
        self.shards.append(shard)


def _to_int(what: str, v: Any) -> int:
    try:
        i = int(v)
        if i == v:
            return i
    except (TypeError, ValueError, OverflowError):
        pass
    raise ReplayFormatError(f"{what}: {v!r} is not an integer")


def _to_float(what: str, v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ReplayFormatError(f"{what} {v!r} is not a number") from None


def _converter(name: str, typ: pa.DataType) -> Callable[[Any], Any]:
    """Check and convert one extra's value (None: missing) to what its Arrow column holds."""
    if pa.types.is_integer(typ):
        bounds = np.iinfo(typ.to_pandas_dtype())
        lo, hi = int(bounds.min), int(bounds.max)

        def to_int(v: Any) -> int | None:
            if v is None:
                return None
            i = _to_int(name, v)
            if not lo <= i <= hi:
                raise ReplayFormatError(f"{name} {i} outside the {typ} range {lo}..{hi}")
            return i

        return to_int
    if pa.types.is_list(typ):  # latent_codes: one small integer per latent position
        return lambda v: None if v is None else [_to_int(name, x) for x in v]
    if pa.types.is_string(typ):

        def to_text(v: Any) -> str | None:
            if v is None or isinstance(v, str):
                return v
            try:  # a mapping or list becomes its JSON text
                return json.dumps(v, sort_keys=True, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise ReplayFormatError(f"{name} {v!r} is not JSON-serialisable: {e}") from None

        return to_text
    return lambda v: None if v is None else _to_float(name, v)
