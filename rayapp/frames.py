"""Frame preprocessing shared by every consumer of frames: the ingest pipeline, DQN's replay
buffer, the online env wrapper and the live player, and the frame stack they keep while acting. One definition, so a network sees the same
pixels in training and in play.

Crop (pixel margins), optional grayscale, then an area resize (the Atari standard; it keeps small
sprites such as Breakout's ball visible). A batch is processed in two OpenCV calls: frames laid
one above the other form one tall image, and an area resize of the tall image equals the resize of
each frame because frame boundaries map exactly onto output rows (k*H_in -> k*H_out).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["FrameSpec", "Preprocessor", "FrameStacker"]


@dataclass(frozen=True)
class FrameSpec:
    """What a network's input frames look like, derived from the config's `data` section."""

    grayscale: bool = True
    resize: tuple[int, int] = (84, 84)  # (height, width); (0, 0) keeps the cropped size
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, bottom, left, right margins in source pixels
    frame_stack: int = 4

    @staticmethod
    def from_config(data_cfg) -> FrameSpec:
        return FrameSpec(
            bool(data_cfg.grayscale), tuple(data_cfg.resize), tuple(data_cfg.crop), int(data_cfg.frame_stack)
        )

    def channels(self, source_shape: tuple[int, ...]) -> int:
        """Channels of one preprocessed frame."""
        if self.grayscale or len(source_shape) == 2:
            return 1
        return int(source_shape[-1])

    def frame_shape(self, source_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(channels, height, width) of one preprocessed frame."""
        h, w = source_shape[0], source_shape[1]
        t, b, left, right = self.crop
        ch, cw = h - t - b, w - left - right
        if ch <= 0 or cw <= 0:
            raise ValueError(f"crop {self.crop} leaves nothing of a {h}x{w} frame")
        if self.resize != (0, 0):
            ch, cw = self.resize
        return (self.channels(source_shape), ch, cw)

    def input_shape(self, source_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(channels x frame_stack, height, width): what the network takes."""
        c, h, w = self.frame_shape(source_shape)
        return (c * self.frame_stack, h, w)

    def to_json(self) -> dict:
        return {
            "grayscale": self.grayscale,
            "resize": list(self.resize),
            "crop": list(self.crop),
            "frame_stack": self.frame_stack,
        }

    @staticmethod
    def from_json(d: dict) -> FrameSpec:
        return FrameSpec(bool(d["grayscale"]), tuple(d["resize"]), tuple(d["crop"]), int(d["frame_stack"]))


class Preprocessor:
    """Source frames (N, H, W[, C]) uint8 -> (N, c, h, w) uint8."""

    def __init__(self, spec: FrameSpec, source_shape: tuple[int, ...]):
        self.spec = spec
        self.source_shape = tuple(source_shape)
        self.out_shape = spec.frame_shape(self.source_shape)
        self._bufs: dict[str, np.ndarray] = {}
        cv2.setNumThreads(1)  # one core per reader; Ray schedules the parallelism

    def _scratch(self, name: str, rows: int, shape: tuple[int, ...]) -> np.ndarray:
        """A reusable buffer (big allocations page-fault on every use; reuse keeps them warm)."""
        buf = self._bufs.get(name)
        if buf is None or buf.shape[0] < rows or buf.shape[1:] != shape:
            buf = np.empty((rows, *shape), np.uint8)
            self._bufs[name] = buf
        return buf[:rows]

    def __call__(self, frames: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        n = frames.shape[0]
        c, oh, ow = self.out_shape
        if out is None:
            out = np.empty((n, c, oh, ow), np.uint8)
        if n == 0:
            return out
        t, b, left, right = self.spec.crop
        h, w = frames.shape[1], frames.shape[2]
        x = frames[:, t : h - b, left : w - right]
        ch, cw = x.shape[1], x.shape[2]
        color = x.ndim == 4 and x.shape[-1] == 3
        if self.spec.grayscale and color:
            tall = cv2.cvtColor(
                np.ascontiguousarray(x).reshape(n * ch, cw, 3),
                cv2.COLOR_RGB2GRAY,
                dst=self._scratch("gray", n * ch, (cw,)),
            )
            c_in = 1
        else:
            c_in = 1 if x.ndim == 3 or x.shape[-1] == 1 else x.shape[-1]
            tall = np.ascontiguousarray(x).reshape((n * ch, cw, c_in) if c_in > 1 else (n * ch, cw))
        if (oh, ow) != (ch, cw):
            shape = (ow, c_in) if c_in > 1 else (ow,)
            tall = cv2.resize(
                tall, (ow, n * oh), dst=self._scratch("small", n * oh, shape), interpolation=cv2.INTER_AREA
            )
        if c_in == 1:
            out[:, 0] = tall.reshape(n, oh, ow)
        else:
            out[:] = tall.reshape(n, oh, ow, c_in).transpose(0, 3, 1, 2)
        return out

    def one(self, frame: np.ndarray) -> np.ndarray:
        """A single frame (H, W[, C]) -> (c, h, w)."""
        return self(frame[None])[0]


class FrameStacker:
    """Raw frames in, the network's stacked observation out: the ingest pipeline's preprocessing
    and stacking (the stack starts filled with the episode's first frame)."""

    def __init__(self, frames: FrameSpec, source_shape: tuple[int, ...]):
        self.pre = Preprocessor(frames, source_shape)
        c, h, w = self.pre.out_shape
        self.k = frames.frame_stack
        self.shape = (c * self.k, h, w)
        self._stack = np.zeros((self.k, c, h, w), np.uint8)

    def reset(self, frame: np.ndarray) -> np.ndarray:
        self._stack[:] = self.pre.one(frame)
        return self._stack.reshape(self.shape).copy()

    def push(self, frame: np.ndarray) -> np.ndarray:
        self._stack[:-1] = self._stack[1:]
        self._stack[-1] = self.pre.one(frame)
        return self._stack.reshape(self.shape).copy()
