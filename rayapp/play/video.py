"""`rayapp play --video FILE`: the first `play.video_steps` frames of the session as a GIF or MP4
(MP4 through PyAV), with the score drawn on them."""

from __future__ import annotations

import numpy as np

from rayapp.envs.episodes import overlay
from rayapp.errors import ConfigError
from rayapp.storage import resolve, write_bytes_atomic

__all__ = ["VideoClip"]


class VideoClip:
    def __init__(self, uri: str, steps: int, fps: float):
        self.uri, self.steps, self.fps = uri, steps, fps
        self.frames: list[np.ndarray] = []
        if uri.lower().endswith(".mp4"):
            try:
                import av  # noqa: F401
            except ImportError:
                raise ConfigError("play.video=*.mp4 needs PyAV: pip install av (or write a .gif)") from None

    def add(self, frame: np.ndarray | None, text: str) -> None:
        if frame is not None and len(self.frames) < self.steps:
            rgb = (
                frame
                if frame.ndim == 3 and frame.shape[-1] == 3
                else np.repeat(frame.reshape(*frame.shape[:2], 1), 3, -1)
            )
            self.frames.append(overlay(rgb, text))

    def write(self) -> str | None:
        if not self.frames:
            return None
        import imageio.v3 as iio

        frames = np.stack(self.frames)
        if self.uri.lower().endswith(".mp4"):
            h, w = (frames.shape[1] // 2) * 2, (frames.shape[2] // 2) * 2  # yuv420p wants even sizes
            data = iio.imwrite("<bytes>", frames[:, :h, :w], extension=".mp4", plugin="pyav", codec="libx264",
                               fps=self.fps)  # fmt: skip
        else:
            data = iio.imwrite("<bytes>", frames, extension=".gif", duration=1000 / self.fps, loop=0)
        write_bytes_atomic(resolve(self.uri), data)
        return resolve(self.uri).uri
