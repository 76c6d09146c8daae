"""One shard on its way to storage: written locally, published whole or not at all.

`ReplayWriter` keeps one `OpenShard` at a time; `publish()` makes it visible under its final name,
`discard()` drops it without touching storage.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from dataclasses import dataclass, field

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayapp.errors import StorageError
from rayapp.replay.schema import DatasetInfo, row_schema
from rayapp.storage import Location, retry_io, storage_errors

__all__ = ["OpenShard", "ShardWritten", "SHARDS_DIR", "TMP_PREFIX"]

SHARDS_DIR = "shards"
TMP_PREFIX = "_tmp-"


@dataclass
class ShardWritten:
    uri: str
    rows: int
    bytes: int
    episodes: list[str] = field(default_factory=list)  # every episode with rows in the shard
    ended: list[str] = field(default_factory=list)  # those whose last row is in it: safe once it is published


class OpenShard:
    """A shard being written, always into a local file first.

    Local dataset: a temporary name beside the shards, renamed when complete (a rename is atomic).
    Object storage: a spool file on this machine's disk; when complete it is uploaded to a
    temporary key and moved (a server-side copy) to its name. Why not stream into the final key, as
    before: pyarrow's S3 output stream has no abort in Python and completes its multipart upload
    whenever it is closed, even from its destructor, so an aborted or failed writer published a
    partial shard. With the spool, `discard()` touches no storage at all, and an upload that fails
    can be retried from the start. The temporary key covers what the upload itself cannot promise:
    an upload cut short by anything but the network (whose errors make the close fail) completes a
    `_tmp-` object at worst, which readers ignore and the writer deletes; the final name is only
    ever made by the copy, which is atomic on S3 and GCS. The price: the shard crosses the network
    once and is copied once inside the store, and it is uploaded when it closes rather than while
    the game plays.
    """

    def __init__(self, loc: Location, info: DatasetInfo, writer_id: str, seq: int, level: int):
        name = f"{writer_id}-{seq:05d}.parquet"
        tmp_name = f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{name}"
        self.loc = loc
        self.final = loc.join(SHARDS_DIR, name)
        self.uri = self.final.uri
        self.schema = row_schema(info, writer_id, seq)
        self.rows = 0
        self.episodes: list[str] = []
        self._moving = False  # a move was sent and no answer came: the shard may be at its name
        if loc.is_local:
            self.path = loc.join(SHARDS_DIR, tmp_name).path
            self.remote_tmp: Location | None = None
            self.where = self.uri  # what a local error names
        else:
            spool = os.environ.get("RAYAPP_SPOOL_DIR") or tempfile.gettempdir()
            self.path = os.path.join(spool, f"rayapp-spool-{tmp_name}")
            self.remote_tmp = loc.join(SHARDS_DIR, tmp_name)
            self.where = self.path
        with storage_errors(self.where):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self.sink = pafs.LocalFileSystem().open_output_stream(self.path)
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

    def publish(self, open_episode: str | None) -> ShardWritten:
        ended = [e for e in self.episodes if e != open_episode]
        with storage_errors(self.where):
            self.writer.close()
            size = self.sink.tell()
            self.sink.close()
        try:
            if self.remote_tmp is None:
                with storage_errors(self.uri):
                    self.loc.fs.move(self.path, self.final.path)
            else:
                retry_io(self._upload, self.uri)
        except StorageError as e:
            self.discard()
            if self._moving:  # the copy may have landed and only its answer been lost
                raise StorageError(
                    f"{e}; the shard may have been published before the connection dropped"
                ) from e
            raise
        except BaseException:
            self.discard()
            raise
        self._remove_spool()
        return ShardWritten(self.uri, self.rows, size, list(self.episodes), ended)

    def _upload(self) -> None:
        """Spool file -> temporary key -> the shard's name; raises the storage's OSError."""
        fs, tmp = self.loc.fs, self.remote_tmp.path
        if self._moving:  # a retry after a move whose answer was lost: did it land?
            landed = fs.get_file_info(self.final.path).size == os.path.getsize(self.path)
            self._moving = False
            if landed:
                with contextlib.suppress(Exception):
                    fs.delete_file(tmp)
                return
        try:
            with open(self.path, "rb") as src:
                out = fs.open_output_stream(tmp)
                try:
                    while chunk := src.read(8 << 20):
                        out.write(chunk)
                finally:
                    out.close()  # completes the temporary object; after a failed part it raises instead
            self._moving = True  # S3 moves by copy then delete: either may be cut after it took effect
            fs.move(tmp, self.final.path)
            self._moving = False
        except BaseException:
            with contextlib.suppress(Exception):
                fs.delete_file(tmp)
            raise

    def discard(self) -> None:
        """Drop the shard: close and delete the local file; storage is not touched."""
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(Exception):
            self.sink.close()
        self._remove_spool()

    def _remove_spool(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)
