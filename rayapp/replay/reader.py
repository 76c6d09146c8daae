"""Read a replay dataset: its description, its shards, validated, as tables or whole episodes.

Shards are listed from storage (``shards/*.parquet``; temporary ``_tmp-*`` files of unfinished or
crashed writers are ignored and reported), ordered by writer and sequence number so an episode
that spans shards is reassembled in order. Every shard's footer carries the dataset id, game,
observation shape, encoding and action space; a shard that disagrees with ``dataset.json``, or
cannot be read, is a `CorruptShardError` naming the file and the problem. Readers either fail on
it or skip it under an explicit tolerance (``max_corrupt_shards``), counting what they skipped.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayapp.errors import CorruptShardError, DatasetNotFoundError, ReplayFormatError, StorageError
from rayapp.replay.schema import SHARD_METADATA_KEY, DatasetInfo, decode_frames, row_schema
from rayapp.replay.writer import SHARDS_DIR, TMP_PREFIX
from rayapp.storage import Location, read_bytes, resolve, storage_errors

__all__ = ["ShardRef", "ShardCheck", "Episode", "ReplayDataset", "open_dataset"]

log = logging.getLogger(__name__)

_SHARD_NAME = re.compile(r"^(?P<writer>.+)-(?P<seq>\d{5,})\.parquet$")


@dataclass(frozen=True, order=True)
class ShardRef:
    writer: str
    seq: int
    uri: str
    path: str
    size: int


@dataclass
class ShardCheck:
    uri: str
    ok: bool
    problem: str = ""
    rows: int = 0
    bytes: int = 0
    episodes: list[str] = field(default_factory=list)


@dataclass
class Episode:
    """One episode's steps in order. `actions` is (T,) for one control, (T, controls) otherwise."""

    episode_id: str
    steps: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    obs: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return len(self.rewards)

    @property
    def score(self) -> float:
        return float(self.rewards.sum(dtype=np.float64))

    @property
    def complete(self) -> bool:
        """Ended by the game or the time limit (not cut by a crash or a mid-episode shard roll)."""
        return bool(self.length and (self.terminated[-1] or self.truncated[-1]))


class ReplayDataset:
    """A dataset at a URI. Cheap to create: it reads `dataset.json` and lists the shards."""

    def __init__(self, uri: str | Location):
        self.loc = uri if isinstance(uri, Location) else resolve(uri)
        self.uri = self.loc.uri
        meta = self.loc.join("dataset.json")
        try:
            text = read_bytes(meta).decode()
        except StorageError as e:
            if isinstance(e.__cause__, FileNotFoundError):
                raise DatasetNotFoundError(
                    f"no replay dataset at {self.uri} (no dataset.json); record one with "
                    f"`rayapp record --set data.uri={self.uri}` or check data.uri"
                ) from None
            raise
        self.info = DatasetInfo.loads(text, meta.uri)
        self.shards, self.leftovers = self._list_shards()
        self.skipped: list[ShardCheck] = []  # corrupt shards skipped by the last read

    # ---- listing ---------------------------------------------------------------------------
    def _list_shards(self) -> tuple[list[ShardRef], list[str]]:
        sel = pafs.FileSelector(self.loc.join(SHARDS_DIR).path, allow_not_found=True)
        with storage_errors(self.uri):
            infos = self.loc.fs.get_file_info(sel)
        shards, leftovers = [], []
        for fi in infos:
            if fi.type != pafs.FileType.File:
                continue
            name = fi.base_name
            uri = self.loc.join(SHARDS_DIR, name).uri
            if name.startswith(TMP_PREFIX):
                leftovers.append(uri)
                continue
            if name.startswith((".", "_")) or not name.endswith(".parquet"):
                continue
            m = _SHARD_NAME.match(name)
            writer, seq = (m["writer"], int(m["seq"])) if m else (name, 0)
            shards.append(ShardRef(writer, seq, uri, fi.path, fi.size))
        return sorted(shards), sorted(leftovers)

    @property
    def total_bytes(self) -> int:
        return sum(s.size for s in self.shards)

    # ---- one shard -------------------------------------------------------------------------
    def _open_file(self, ref: ShardRef) -> pq.ParquetFile:
        try:
            with storage_errors(ref.uri):
                f = self.loc.fs.open_input_file(ref.path)
            return pq.ParquetFile(f)
        except StorageError:
            raise
        except (pa.ArrowException, OSError, ValueError) as e:
            raise CorruptShardError(
                ref.uri, f"unreadable Parquet ({' '.join(str(e).split())[:200]})"
            ) from None

    def check_footer(self, ref: ShardRef, pf: pq.ParquetFile) -> None:
        """The shard's own description must agree with dataset.json."""
        meta = pf.schema_arrow.metadata or {}
        if SHARD_METADATA_KEY not in meta:
            raise CorruptShardError(
                ref.uri, "no rayapp shard metadata in the footer (not written by ReplayWriter)"
            )
        try:
            sm = json.loads(meta[SHARD_METADATA_KEY])
        except json.JSONDecodeError:
            raise CorruptShardError(ref.uri, "shard metadata is not valid JSON") from None
        info = self.info
        expected = info.shard_metadata(sm.get("writer", ""), sm.get("seq", 0))
        for key, label in (  # the frame size first: a shard of another size is the likeliest mix-up
            ("obs_shape", "observation shape"),
            ("dataset_id", "dataset id"),
            ("game", "game"),
            ("encoding", "frame encoding"),
            ("actions", "action space"),
        ):
            if sm.get(key) != expected[key]:
                raise CorruptShardError(
                    ref.uri,
                    f"disagrees with dataset.json: {label} {sm.get(key)!r} in the shard, {expected[key]!r} in dataset.json",
                )
        want = row_schema(info)
        have = pf.schema_arrow
        for f in want:
            if f.name not in have.names:
                raise CorruptShardError(ref.uri, f"missing column '{f.name}'")
            if have.field(f.name).type != f.type:
                raise CorruptShardError(
                    ref.uri, f"column '{f.name}' is {have.field(f.name).type}, expected {f.type}"
                )

    def read_shard(
        self, ref: ShardRef, columns: Sequence[str] | None = None, exclude: Sequence[str] = ()
    ) -> pa.Table:
        """Read (some columns of) a shard after checking its footer against dataset.json."""
        pf = self._open_file(ref)
        self.check_footer(ref, pf)
        if exclude:
            columns = [c for c in (columns or pf.schema_arrow.names) if c not in exclude]
        try:
            with storage_errors(ref.uri):
                return pf.read(columns=list(columns) if columns else None)
        except StorageError:
            raise
        except (pa.ArrowException, OSError, ValueError) as e:
            raise CorruptShardError(ref.uri, f"cannot read rows ({' '.join(str(e).split())[:200]})") from None

    def validate_shard(self, ref: ShardRef, frames: bool = True) -> ShardCheck:
        """Check a shard against the contract; `frames=False` skips decoding the observations."""
        try:
            table = self.read_shard(ref, exclude=() if frames else ("obs",))
            problem = self.check_rows(table, frames)
        except CorruptShardError as e:
            return ShardCheck(ref.uri, False, e.problem, bytes=ref.size)
        episodes = list(dict.fromkeys(table.column("episode_id").to_pylist())) if table.num_rows else []
        if problem:
            return ShardCheck(ref.uri, False, problem, table.num_rows, ref.size, episodes)
        return ShardCheck(ref.uri, True, "", table.num_rows, ref.size, episodes)

    def check_rows(self, t: pa.Table, frames: bool) -> str:
        n = t.num_rows
        if n == 0:
            return "no rows"
        for c in t.column_names:
            if c in self.info.extras:
                continue
            if t.column(c).null_count:
                return f"column '{c}' has {t.column(c).null_count} missing values"
        ep = t.column("episode_id").to_numpy(zero_copy_only=False)
        step = t.column("step").to_numpy()
        new = np.ones(n, dtype=bool)
        new[1:] = ep[1:] != ep[:-1]
        starts = np.flatnonzero(new)
        ids = ep[starts]
        if len(set(ids)) != len(ids):
            dup = next(x for x in ids if (ids == x).sum() > 1)
            return f"episode {dup} appears in two separate runs of rows"
        cont = ~new
        gaps = np.flatnonzero(cont & (np.diff(step, prepend=step[0] - 1) != 1))
        if len(gaps):
            r = int(gaps[0])
            return f"row {r} (episode {ep[r]}): step {step[r]} does not follow step {step[r - 1]}"
        ends = np.append(starts[1:] - 1, n - 1)
        done = t.column("terminated").to_numpy(zero_copy_only=False) | t.column("truncated").to_numpy(
            zero_copy_only=False
        )
        early = np.flatnonzero(done & ~np.isin(np.arange(n), ends))
        if len(early):
            r = int(early[0])
            return f"row {r} (episode {ep[r]} step {step[r]}): episode marked ended but more steps follow"
        for col, ctl in zip(self.info.action_columns, self.info.actions):
            a = t.column(col).to_numpy()
            bad = np.flatnonzero((a < 0) | (a >= ctl.n))
            if len(bad):
                r = int(bad[0])
                return f"row {r} (episode {ep[r]} step {step[r]}): {col} {a[r]} outside 0..{ctl.n - 1}"
        rew = t.column("reward").to_numpy()
        if not np.all(np.isfinite(rew)):
            r = int(np.flatnonzero(~np.isfinite(rew))[0])
            return f"row {r} (episode {ep[r]} step {step[r]}): reward is {rew[r]}"
        if frames:
            try:
                decode_frames(t.column("obs"), self.info.observation)
            except ReplayFormatError as e:
                return f"obs: {e}"
        return ""

    # ---- many shards -----------------------------------------------------------------------
    def iter_tables(
        self,
        columns: Sequence[str] | None = None,
        max_corrupt_shards: int = 0,
        shards: Sequence[ShardRef] | None = None,
    ) -> Iterator[tuple[ShardRef, pa.Table]]:
        """Yield (shard, table) in order; skip up to `max_corrupt_shards` corrupt shards, counted in
        `self.skipped`, and raise on the next one."""
        self.skipped = []
        for ref in self.shards if shards is None else shards:
            try:
                table = self.read_shard(ref, columns)
            except CorruptShardError as e:
                self.skipped.append(ShardCheck(ref.uri, False, e.problem, bytes=ref.size))
                if len(self.skipped) > max_corrupt_shards:
                    extra = (
                        f" ({len(self.skipped)} corrupt shards, data.max_corrupt_shards={max_corrupt_shards})"
                        if max_corrupt_shards
                        else ""
                    )
                    raise CorruptShardError(ref.uri, e.problem + extra) from None
                log.warning(
                    "skipping corrupt shard %s: %s (%d/%d tolerated)",
                    ref.uri,
                    e.problem,
                    len(self.skipped),
                    max_corrupt_shards,
                )
                continue
            yield ref, table

    def iter_episodes(
        self, decode: bool = True, max_corrupt_shards: int = 0, extras: Sequence[str] | None = None
    ) -> Iterator[Episode]:
        """Whole episodes in recording order, joined across shard boundaries."""
        info = self.info
        xs = list(info.extras if extras is None else extras)
        cols = ["episode_id", "step", *info.action_columns, "reward", "terminated", "truncated", *xs]
        if decode:
            cols.append("obs")
        pending: list[pa.Table] = []
        pending_key: tuple[str, str] | None = None

        def emit(parts: list[pa.Table]) -> Episode:
            t = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
            return self._episode(t, decode, xs)

        for ref, table in self.iter_tables(cols, max_corrupt_shards):
            if table.num_rows == 0:
                continue
            ep = table.column("episode_id")
            bounds = _run_starts(ep)
            for k, start in enumerate(bounds):
                stop = bounds[k + 1] if k + 1 < len(bounds) else table.num_rows
                part = table.slice(start, stop - start)
                key = (ref.writer, part.column("episode_id")[0].as_py())
                if pending and key == pending_key:
                    pending.append(part)
                    continue
                if pending:
                    yield emit(pending)
                pending, pending_key = [part], key
        if pending:
            yield emit(pending)

    def _episode(self, t: pa.Table, decode: bool, xs: list[str]) -> Episode:
        info = self.info
        acts = [t.column(c).to_numpy() for c in info.action_columns]
        return Episode(
            episode_id=t.column("episode_id")[0].as_py(),
            steps=t.column("step").to_numpy(),
            actions=acts[0] if len(acts) == 1 else np.stack(acts, axis=1) if acts else np.zeros((t.num_rows, 0), np.int32),
            rewards=t.column("reward").to_numpy(),
            terminated=t.column("terminated").to_numpy(zero_copy_only=False),
            truncated=t.column("truncated").to_numpy(zero_copy_only=False),
            obs=decode_frames(t.column("obs"), info.observation) if decode else None,
            extras={x: t.column(x).to_numpy(zero_copy_only=False) for x in xs},
        )


def _run_starts(col: pa.ChunkedArray | pa.Array) -> list[int]:
    """Row indices where the value changes (the first row included)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(arr) == 0:
        return []
    if len(arr) == 1:
        return [0]
    changed = pc.not_equal(arr.slice(1), arr.slice(0, len(arr) - 1)).to_numpy(zero_copy_only=False)
    return [0, *(np.flatnonzero(changed) + 1).tolist()]


def open_dataset(uri: str) -> ReplayDataset:
    return ReplayDataset(uri)
