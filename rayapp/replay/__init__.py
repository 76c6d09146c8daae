"""The replay contract: sharded Parquet episodes with a `dataset.json`, on local disk or object storage."""

from rayapp.replay.dataset import create_dataset, write_session
from rayapp.replay.reader import Episode, ReplayDataset, ShardCheck, ShardRef, open_dataset
from rayapp.replay.schema import ActionControl, DatasetInfo, ObservationSpec, decode_frames, encode_frame
from rayapp.replay.writer import ReplayWriter, ShardWritten

__all__ = [
    "ActionControl",
    "DatasetInfo",
    "Episode",
    "ObservationSpec",
    "ReplayDataset",
    "ReplayWriter",
    "ShardCheck",
    "ShardRef",
    "ShardWritten",
    "create_dataset",
    "decode_frames",
    "encode_frame",
    "open_dataset",
    "write_session",
]
