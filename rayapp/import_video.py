"""`rayapp import-video SOURCE ...`: gameplay video without recorded inputs into an action-less
dataset in the replay contract (at `data.uri`), for the latent action model to label.

    rayapp import-video bulk_videos/ --set data.uri=runs/video/replays --set env.game=Breakout
    rayapp import-video match1.mp4 match2.mkv --set video.every=4 --set video.frame_size=[210,160]

A SOURCE is a folder of episode folders of numbered PNG frames (`bulk_videos/<episode>/0.png,
1.png, ...`, in numeric order), one such episode folder, a video file (.mp4 .mkv .avi .webm .mov,
read with PyAV; one file is one episode) or a folder of video files. Frames become RGB uint8
observations (`video.frame_size` resizes them, `video.every` keeps every n-th frame of a video,
`video.max_frames` caps an episode); each step has reward 0, extra `frame` (its source frame
number), and the last step of an episode `truncated` (the video ends; the game did not say so).
`dataset.json` says `action_space: none`, the frame size, and the rate (a video's own rate divided
by `every`; `video.fps` for PNG folders, default 60 / env.frameskip).

An episode is decoded whole before its first step is written, so a missing frame (a gap in the
numbering), an unreadable PNG or video, or a frame of another size never leaves half an episode:
the import stops naming the folder or file and the frame, or, under `video.max_bad_episodes: N`,
skips and counts up to N such episodes. Frames of different sizes without `video.frame_size`
are refused with both sizes named.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

from rayapp.config import Config
from rayapp.errors import ReplayFormatError
from rayapp.progress import Progress, say
from rayapp.replay.dataset import create_dataset, write_session
from rayapp.replay.schema import DatasetInfo, ObservationSpec, choose_encoding
from rayapp.replay.writer import ReplayWriter

__all__ = ["import_video", "ImportSummary", "find_episodes", "VIDEO_SUFFIXES"]

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".webm", ".mov")
_NUMBERED = re.compile(r"^(\d+)\.png$", re.IGNORECASE)


class BadEpisode(ReplayFormatError):
    """One episode of the source cannot be imported (missing or unreadable frame, wrong size)."""


@dataclass
class ImportSummary:
    uri: str
    episodes: int = 0
    frames: int = 0
    shape: tuple[int, ...] = ()
    frame_rate: float = 0.0
    skipped: list[str] = field(default_factory=list)
    bytes: int = 0

    def line(self) -> str:
        skipped = f"; skipped {len(self.skipped)} bad episode(s): {'; '.join(self.skipped)}" if self.skipped else ""
        return (f"imported {self.episodes} episodes, {self.frames:,} frames of {'x'.join(map(str, self.shape))} at "
                f"{self.frame_rate:g} fps into {self.uri} ({self.bytes / 2**20:.1f} MB, no actions){skipped}")  # fmt: skip


@dataclass(frozen=True)
class _Source:
    path: str
    kind: str  # "png" (a folder of numbered frames) or "video"

    @property
    def episode_id(self) -> str:
        name = os.path.splitext(os.path.basename(self.path.rstrip("/")))[0] if self.kind == "video" else \
            os.path.basename(self.path.rstrip("/"))  # fmt: skip
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "episode"


def _numbered(folder: str) -> list[tuple[int, str]]:
    out = []
    for name in os.listdir(folder):
        m = _NUMBERED.match(name)
        if m:
            out.append((int(m[1]), os.path.join(folder, name)))
    return sorted(out)


def find_episodes(sources: list[str]) -> list[_Source]:
    """Every episode under the sources, in name order per source."""
    found: list[_Source] = []
    for src in sources:
        if os.path.isfile(src):
            if not src.lower().endswith(VIDEO_SUFFIXES):
                raise ReplayFormatError(f"{src}: not a video file ({', '.join(VIDEO_SUFFIXES)}) or a folder of PNG frames")
            found.append(_Source(src, "video"))
        elif os.path.isdir(src):
            if _numbered(src):
                found.append(_Source(src, "png"))
                continue
            for name in sorted(os.listdir(src)):
                p = os.path.join(src, name)
                if os.path.isdir(p) and _numbered(p):
                    found.append(_Source(p, "png"))
                elif os.path.isfile(p) and name.lower().endswith(VIDEO_SUFFIXES):
                    found.append(_Source(p, "video"))
        else:
            raise ReplayFormatError(f"{src}: no such file or folder")
    if not found:
        raise ReplayFormatError(f"no episodes in {', '.join(sources)}: expected folders of numbered PNGs "
                                f"(<episode>/0.png, 1.png, ...) or video files ({', '.join(VIDEO_SUFFIXES)})")  # fmt: skip
    ids = [s.episode_id for s in found]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup:
        raise ReplayFormatError(f"two episodes would both be named {dup!r} ({[s.path for s in found if s.episode_id == dup]})")
    return found


def _rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _png_frames(src: _Source, max_frames: int) -> Iterator[tuple[int, np.ndarray]]:
    frames = _numbered(src.path)
    for expected, (number, path) in enumerate(frames):
        if number != expected:
            raise BadEpisode(f"{src.path}: frame {expected}.png is missing (the next is {number}.png)")
        if max_frames and expected >= max_frames:
            return
        img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if img is None:
            raise BadEpisode(f"{src.path}: frame {os.path.basename(path)} is not a readable PNG")
        yield number, _rgb(img)


def _video_frames(src: _Source, every: int, max_frames: int) -> Iterator[tuple[int, np.ndarray]]:
    import av

    kept = 0
    try:
        with av.open(src.path) as container:
            stream = container.streams.video[0]
            for i, frame in enumerate(container.decode(stream)):
                if i % every:
                    continue
                if max_frames and kept >= max_frames:
                    return
                kept += 1
                yield i, frame.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, IndexError) as e:
        raise BadEpisode(f"{src.path}: unreadable video after {kept} frames ({type(e).__name__}: {e})") from None


def _video_rate(path: str, every: int) -> float:
    import av

    try:
        with av.open(path) as c:
            rate = c.streams.video[0].average_rate
            return float(rate) / every if rate else 0.0
    except av.error.FFmpegError:
        return 0.0


def _episode(src: _Source, cfg: Config) -> tuple[list[int], np.ndarray]:
    v = cfg.video
    frames = _video_frames(src, v.every, v.max_frames) if src.kind == "video" else _png_frames(src, v.max_frames)
    numbers, out = [], []
    for number, img in frames:
        if v.frame_size != [0, 0] and img.shape[:2] != tuple(v.frame_size):
            img = cv2.resize(img, (v.frame_size[1], v.frame_size[0]), interpolation=cv2.INTER_AREA)
        if out and img.shape != out[0].shape:
            raise BadEpisode(f"{src.path}: frame {number} is {img.shape[1]}x{img.shape[0]}, the ones before "
                             f"{out[0].shape[1]}x{out[0].shape[0]}; set video.frame_size=[H,W] to resize them all")  # fmt: skip
        numbers.append(number)
        out.append(img)
    if not out:
        raise BadEpisode(f"{src.path}: no frames")
    return numbers, np.stack(out)


def import_video(cfg: Config, sources: list[str]) -> ImportSummary:
    v = cfg.video
    episodes = find_episodes(sources)
    uri = cfg.data_uri
    summary = ImportSummary(uri)
    writer: ReplayWriter | None = None
    bar = Progress(len(episodes), "import-video", unit="ep", log_every=10)
    try:
        for src in episodes:
            try:
                numbers, frames = _episode(src, cfg)
                if writer is not None and frames.shape[1:] != summary.shape:
                    raise ReplayFormatError(
                        f"{src.path}: frames of {frames.shape[2]}x{frames.shape[1]}, but the episodes before are "
                        f"{summary.shape[1]}x{summary.shape[0]}; set video.frame_size=[H,W] to resize them all")  # fmt: skip
            except BadEpisode as e:
                summary.skipped.append(str(e))
                if len(summary.skipped) > v.max_bad_episodes:
                    extra = f" ({len(summary.skipped)} bad episodes, video.max_bad_episodes={v.max_bad_episodes})" \
                        if v.max_bad_episodes else " (set video.max_bad_episodes to skip such episodes)"  # fmt: skip
                    raise ReplayFormatError(f"{e}{extra}") from None
                say(f"import-video: skipping {e}")
                bar.update(1)
                continue
            if writer is None:
                writer, summary = _open(cfg, src, frames, summary)
            if len(frames) == 1:
                say(f"import-video: {src.path} has a single frame (no frame pair for the latent action model)")
            writer.begin_episode(src.episode_id)
            for k, (number, img) in enumerate(zip(numbers, frames)):
                writer.add_step(img, None, 0.0, False, k == len(frames) - 1, frame=number)
            writer.end_episode()
            summary.episodes += 1
            summary.frames += len(frames)
            bar.update(1, frames=f"{summary.frames:,}")
        if writer is None:
            raise ReplayFormatError(f"nothing imported from {', '.join(sources)}: every episode was bad")
        shards = writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()  # the episodes of published shards stay; the one in progress is dropped
        raise
    finally:
        bar.close()
    summary.bytes = sum(s.bytes for s in shards)
    write_session(uri, f"import-{writer.writer_id}", {"sources": sources, "episodes": summary.episodes,
                  "frames": summary.frames, "skipped": summary.skipped, "shards": [s.uri for s in shards]})  # fmt: skip
    return summary


def _open(cfg: Config, src: _Source, frames: np.ndarray, summary: ImportSummary) -> tuple[ReplayWriter, ImportSummary]:
    v, r = cfg.video, cfg.record
    shape = tuple(frames.shape[1:])
    rate = _video_rate(src.path, v.every) if src.kind == "video" else 0.0
    rate = rate or v.fps or 60.0 / cfg.env.frameskip
    game = v.game or cfg.env.game
    info = DatasetInfo(
        game=game,
        env_id=game,
        observation=ObservationSpec(shape, encoding=choose_encoding(shape, r.encoding), jpeg_quality=r.jpeg_quality),
        actions=(),
        frame_rate=rate,
        extras=("frame",),
        recorded_by={"source": "video", "every": v.every, "frame_size": list(v.frame_size)},
    )
    info = create_dataset(cfg.data_uri, info, append=v.append, append_key="video.append")
    if info.actions:
        raise ReplayFormatError(f"{cfg.data_uri} holds a dataset with actions; video goes into an action-less one")
    writer = ReplayWriter(cfg.data_uri, info, f"video-{uuid.uuid4().hex[:6]}", shard_mb=r.shard_mb,
                          shard_steps=r.shard_steps, max_shard_mb=r.max_shard_mb, row_group_rows=r.row_group_rows,
                          compression_level=r.compression_level)  # fmt: skip
    summary.shape, summary.frame_rate = shape, rate
    return writer, summary
