"""The replay contract: what `dataset.json` says, what a shard's rows hold, and how frames are encoded.

A dataset is a folder (local or object storage) with ``dataset.json`` and ``shards/*.parquet``.
One row per step, in order: ``episode_id, step, obs, action(s), reward, terminated, truncated`` and
optional extras. The next state of a step is the observation of the next row of the same episode.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

from rayapp.errors import ReplayFormatError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ActionControl",
    "ObservationSpec",
    "DatasetInfo",
    "CORE_COLUMNS",
    "EXTRA_TYPES",
    "row_schema",
    "encode_frame",
    "decode_frames",
    "frames_view",
    "choose_encoding",
    "LATENT_VOCABULARY_MAX",
]

FORMAT = "rayapp.replay"
FORMAT_VERSION = 1
SHARD_METADATA_KEY = b"rayapp.shard"

# Extras a recorder may add, with their Arrow types. Anything else is refused at write time, so a
# typo does not silently become a new column.
EXTRA_TYPES: dict[str, pa.DataType] = {
    "score": pa.float32(),  # cumulative episode score after this step
    "lives": pa.int16(),
    "frame": pa.int32(),  # emulator frame number within the episode
    "time": pa.float64(),  # unix time of the step, seconds
    "teacher_action": pa.int32(),  # what the teacher wanted when noise chose another action
    "dropped": pa.int16(),  # screen: frame boundaries missed just before this step (the recorder was late)
    "late_ms": pa.float32(),  # screen: how long after its frame boundary this step was captured
    # screen: the reward source's other extras for this step as JSON text (a game mod's state such as
    # speed and position; screen_score's reward_error), e.g. '{"speed": 12.5, "position": [3, 1, 0]}'
    "reward_info": pa.string(),
    # `rayapp lam label`: the latent action of the pair (this step's frame, the next step's frame);
    # one code per step (positions: 1) or the joint code of all positions when codes**positions
    # <= LATENT_VOCABULARY_MAX; null on an episode's last step (it has no next frame)
    "latent_action": pa.int32(),
    "latent_codes": pa.list_(pa.int16()),  # the code of every latent position, in grid order
}
LATENT_VOCABULARY_MAX = 65536  # a larger joint vocabulary is no action space to imitate


@dataclass(frozen=True)
class ActionControl:
    """One discrete control: a single Atari action set, or one head of a factorised space."""

    name: str
    n: int
    labels: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "n": self.n, "labels": list(self.labels)}

    @staticmethod
    def from_json(d: dict[str, Any]) -> ActionControl:
        return ActionControl(str(d["name"]), int(d["n"]), tuple(d.get("labels", ())))


@dataclass(frozen=True)
class ObservationSpec:
    shape: tuple[int, ...]
    dtype: str = "uint8"
    encoding: str = "raw"  # "raw" (bytes, zstd in Parquet) or "jpeg"
    jpeg_quality: int = 90

    @property
    def frame_bytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    def to_json(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "encoding": self.encoding,
            "jpeg_quality": self.jpeg_quality,
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> ObservationSpec:
        return ObservationSpec(
            tuple(int(x) for x in d["shape"]),
            d.get("dtype", "uint8"),
            d.get("encoding", "raw"),
            int(d.get("jpeg_quality", 90)),
        )


def choose_encoding(shape: tuple[int, ...], requested: str) -> str:
    """`auto`: lossless raw+zstd up to 256x256 pixels (Atari compresses 100x or more), JPEG above it
    (screen captures, where lossless reaches only 2-4x)."""
    if requested != "auto":
        return requested
    return "raw" if shape[0] * shape[1] <= 256 * 256 else "jpeg"


@dataclass
class DatasetInfo:
    """The content of `dataset.json`."""

    game: str
    env_id: str
    observation: ObservationSpec
    actions: tuple[ActionControl, ...]
    frame_rate: float
    extras: tuple[str, ...] = ()
    recorded_by: dict[str, Any] = field(default_factory=dict)
    # `rayapp lam label`: {"codes", "positions", "vocabulary", "model", "source"} (empty: not labelled)
    latent: dict[str, Any] = field(default_factory=dict)
    dataset_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    format: str = FORMAT
    version: int = FORMAT_VERSION

    # ---- columns --------------------------------------------------------------------------
    @property
    def action_columns(self) -> list[str]:
        if len(self.actions) == 1:
            return ["action"]
        return [f"action_{c.name}" for c in self.actions]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "version": self.version,
            "dataset_id": self.dataset_id,
            "created": self.created,
            "game": self.game,
            "env_id": self.env_id,
            "observation": self.observation.to_json(),
            "action_space": {
                # "none": unlabelled video (rayapp import-video), no action column
                "type": "none" if not self.actions else "discrete" if len(self.actions) == 1 else "factorised",
                "controls": [c.to_json() for c in self.actions],
            },
            "frame_rate": self.frame_rate,
            "extras": list(self.extras),
            "recorded_by": self.recorded_by,
            **({"latent_actions": self.latent} if self.latent else {}),
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"

    @staticmethod
    def from_json(d: dict[str, Any], where: str = "dataset.json") -> DatasetInfo:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ReplayFormatError(
                f"{where}: not a rayapp replay description (format is {d.get('format') if isinstance(d, dict) else d!r})"
            )
        if int(d.get("version", 0)) > FORMAT_VERSION:
            raise ReplayFormatError(
                f"{where}: format version {d['version']} is newer than this rayapp understands ({FORMAT_VERSION}); upgrade rayapp"
            )
        try:
            info = DatasetInfo(
                game=str(d["game"]),
                env_id=str(d.get("env_id", d["game"])),
                observation=ObservationSpec.from_json(d["observation"]),
                actions=tuple(ActionControl.from_json(c) for c in d["action_space"]["controls"]),
                frame_rate=float(d.get("frame_rate", 0.0)),
                extras=tuple(d.get("extras", ())),
                recorded_by=dict(d.get("recorded_by", {})),
                latent=dict(d.get("latent_actions", {})),
                dataset_id=str(d["dataset_id"]),
                created=str(d.get("created", "")),
                version=int(d.get("version", FORMAT_VERSION)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ReplayFormatError(f"{where}: missing or malformed field {e}") from None
        unknown = [x for x in info.extras if x not in EXTRA_TYPES]
        if unknown:
            raise ReplayFormatError(f"{where}: unknown extras {unknown} (known: {sorted(EXTRA_TYPES)})")
        if info.observation.encoding not in ("raw", "jpeg"):
            raise ReplayFormatError(f"{where}: unknown observation encoding {info.observation.encoding!r}")
        return info

    @staticmethod
    def loads(text: str, where: str = "dataset.json") -> DatasetInfo:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ReplayFormatError(f"{where}: not valid JSON ({e})") from None
        return DatasetInfo.from_json(data, where)

    def shard_metadata(self, writer: str, seq: int) -> dict[str, Any]:
        """What every shard carries about itself, so a shard from elsewhere is caught."""
        return {
            "dataset_id": self.dataset_id,
            "writer": writer,
            "seq": seq,
            "game": self.game,
            "obs_shape": list(self.observation.shape),
            "encoding": self.observation.encoding,
            "actions": [c.to_json() for c in self.actions],
            "version": self.version,
        }

    def compatible_with(self, other: DatasetInfo) -> list[str]:
        """What would make appending `other`'s recordings to this dataset wrong (empty: nothing)."""
        problems = []
        if self.game != other.game:
            problems.append(f"game {self.game} vs {other.game}")
        if self.observation.shape != other.observation.shape:
            problems.append(f"observation shape {self.observation.shape} vs {other.observation.shape}")
        if self.observation.encoding != other.observation.encoding:
            problems.append(f"encoding {self.observation.encoding} vs {other.observation.encoding}")
        if self.actions != other.actions:
            problems.append("action spaces differ")
        return problems


CORE_COLUMNS = ("episode_id", "step", "obs", "reward", "terminated", "truncated")


def row_schema(info: DatasetInfo, writer: str = "", seq: int = 0) -> pa.Schema:
    fields = [
        pa.field("episode_id", pa.string(), nullable=False),
        pa.field("step", pa.int32(), nullable=False),
        pa.field("obs", pa.binary(), nullable=False),
        *[pa.field(c, pa.int32(), nullable=False) for c in info.action_columns],
        pa.field("reward", pa.float32(), nullable=False),
        pa.field("terminated", pa.bool_(), nullable=False),
        pa.field("truncated", pa.bool_(), nullable=False),
        *[pa.field(x, EXTRA_TYPES[x]) for x in info.extras],
    ]
    meta = {SHARD_METADATA_KEY: json.dumps(info.shard_metadata(writer, seq)).encode()}
    return pa.schema(fields, metadata=meta)


# ---- frames ------------------------------------------------------------------------------------


def encode_frame(obs: np.ndarray, spec: ObservationSpec) -> bytes:
    if obs.shape != spec.shape or obs.dtype != np.dtype(spec.dtype):
        raise ReplayFormatError(
            f"observation of shape {obs.shape} {obs.dtype} does not match the dataset's {spec.shape} {spec.dtype}"
        )
    if spec.encoding == "raw":
        return obs.tobytes()
    img = obs if obs.ndim == 2 or obs.shape[-1] == 1 else cv2.cvtColor(obs, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, spec.jpeg_quality])
    if not ok:
        raise ReplayFormatError("JPEG encoding failed")
    return buf.tobytes()


def _binary_chunks(col: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    return list(col.chunks) if isinstance(col, pa.ChunkedArray) else [col]


def frames_view(col: pa.Array | pa.ChunkedArray, spec: ObservationSpec) -> np.ndarray | None:
    """Raw frames as a read-only (N, *shape) view of the column's value buffer, without a copy,
    when the column is one chunk of raw frames of the right size; None otherwise."""
    if spec.encoding != "raw":
        return None
    chunks = _binary_chunks(col)
    if len(chunks) != 1 or chunks[0].null_count or pa.types.is_large_binary(chunks[0].type):
        return None
    chunk = chunks[0]
    m = len(chunk)
    if m == 0:
        return np.empty((0, *spec.shape), spec.dtype)
    offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32)[chunk.offset : chunk.offset + m + 1]
    if not np.all(np.diff(offsets) == spec.frame_bytes):
        return None
    values = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)
    return values[offsets[0] : offsets[-1]].view(spec.dtype).reshape(m, *spec.shape)


def decode_frames(
    col: pa.Array | pa.ChunkedArray, spec: ObservationSpec, out: np.ndarray | None = None
) -> np.ndarray:
    """Decode a binary column into an (N, *shape) array.

    Raw frames are read straight from the column's value buffer without copying each frame
    (one contiguous view per chunk), which is what makes decode run at memory speed.
    """
    n = len(col)
    if out is None:
        out = np.empty((n, *spec.shape), dtype=spec.dtype)
    size = spec.frame_bytes
    pos = 0
    for chunk in _binary_chunks(col):
        m = len(chunk)
        if m == 0:
            continue
        if chunk.null_count:
            raise ReplayFormatError(f"{chunk.null_count} missing frames (null obs)")
        if spec.encoding == "raw":
            if pa.types.is_large_binary(chunk.type):
                offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int64)[
                    chunk.offset : chunk.offset + m + 1
                ]
            else:
                offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32)[
                    chunk.offset : chunk.offset + m + 1
                ]
            lengths = np.diff(offsets)
            if not np.all(lengths == size):
                bad = int(np.argmax(lengths != size))
                raise ReplayFormatError(
                    f"frame {pos + bad} has {int(lengths[bad])} bytes, expected {size} for shape {spec.shape}"
                )
            values = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)
            flat = values[offsets[0] : offsets[-1]]
            out[pos : pos + m] = flat.view(spec.dtype).reshape(m, *spec.shape)
        else:
            flag = cv2.IMREAD_GRAYSCALE if len(spec.shape) == 2 or spec.shape[-1] == 1 else cv2.IMREAD_COLOR
            for i, b in enumerate(chunk.to_pylist()):
                img = cv2.imdecode(np.frombuffer(b, np.uint8), flag)
                if img is None:
                    raise ReplayFormatError(f"frame {pos + i} is not a decodable JPEG")
                if flag == cv2.IMREAD_COLOR:
                    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
                if img.size != int(np.prod(spec.shape)):
                    raise ReplayFormatError(f"frame {pos + i} decodes to {img.shape}, expected {spec.shape}")
                out[pos + i] = img.reshape(spec.shape)
        pos += m
    return out
