"""What the live loop measures and the console line it prints (the GTA V player's console in the seeds).

Per step: when its frame was captured, when the network's prediction was ready, when the action
went out (the next step's input send), how late the step met its frame boundary, and how long the
whole step took. FPS counts captures per second, PPS predictions per second (over the last
`window_s` seconds); latency is a frame's capture to its action being sent, p50 and p99.
"""

from __future__ import annotations

import collections
import sys
import time
from typing import Any, TextIO

import numpy as np

__all__ = ["ConsoleLine", "LoopStats", "format_outputs"]


def format_outputs(outputs: list[np.ndarray], limit: int = 6) -> str:
    """The network's raw outputs, a few per control: '[0.12 1.30 -0.40 ...]'."""
    parts = []
    for out in outputs:
        vals = " ".join(f"{v:.2f}" for v in out[:limit])
        parts.append(f"[{vals}{' ...' if len(out) > limit else ''}]")
    return " ".join(parts) or "-"


class LoopStats:
    def __init__(self, window_s: float = 2.0):
        self.window_s = window_s
        self.captures: collections.deque[float] = collections.deque()
        self.predictions: collections.deque[float] = collections.deque()
        self.latency_ms: list[float] = []  # capture -> action sent, every step
        self.step_ms: list[float] = []  # the loop's whole step (prediction + env step)
        self.late_ms: list[float] = []  # the env's lateness against its frame boundary
        self.dropped = 0
        self.dropped_at: list[int] = []  # the steps that missed frame boundaries
        self.steps = 0
        self.started = time.perf_counter()

    def _push(self, q: collections.deque, t: float) -> None:
        q.append(t)
        while q and q[0] < t - self.window_s:
            q.popleft()

    def capture(self, t: float) -> None:
        self._push(self.captures, t)

    def prediction(self, t: float) -> None:
        self._push(self.predictions, t)

    def step(self, latency_ms: float | None, step_ms: float, late_ms: float, dropped: int) -> None:
        self.steps += 1
        if latency_ms is not None:
            self.latency_ms.append(latency_ms)
        self.step_ms.append(step_ms)
        self.late_ms.append(late_ms)
        self.dropped += dropped
        if dropped:
            self.dropped_at.append(self.steps)

    @staticmethod
    def rate(q: collections.deque) -> float:
        return (len(q) - 1) / (q[-1] - q[0]) if len(q) > 1 and q[-1] > q[0] else 0.0

    @staticmethod
    def pct(xs: list[float], q: float) -> float:
        return float(np.percentile(xs, q)) if xs else float("nan")

    def line(self, outputs: str, inputs: str, age_s: float | None, extra: str = "") -> str:
        lat = self.latency_ms[-500:]
        age = "?" if age_s is None else (f"{age_s:.0f}s" if age_s < 120 else f"{age_s / 60:.0f}min")
        return (f"play step {self.steps:,} | FPS {self.rate(self.captures):5.1f} PPS {self.rate(self.predictions):5.1f} | "
                f"latency p50 {self.pct(lat, 50):5.1f} p99 {self.pct(lat, 99):5.1f} ms | dropped {self.dropped} | "
                f"out {outputs} -> {inputs} | checkpoint {age} old{extra}")  # fmt: skip

    def summary(self) -> dict[str, Any]:
        secs = time.perf_counter() - self.started
        return {
            "steps": self.steps,
            "seconds": round(secs, 2),
            "steps_per_s": round(self.steps / secs, 2) if secs > 0 else 0.0,
            "latency_p50_ms": round(self.pct(self.latency_ms, 50), 3),
            "latency_p99_ms": round(self.pct(self.latency_ms, 99), 3),
            "step_p99_ms": round(self.pct(self.step_ms, 99), 3),
            "step_max_ms": round(max(self.step_ms), 3) if self.step_ms else float("nan"),
            "late_p99_ms": round(self.pct(self.late_ms, 99), 3),
            "dropped_frames": self.dropped,
            "dropped_at_steps": self.dropped_at[:100],
        }


class ConsoleLine:
    """Rewrites one line on a terminal every `every_s` seconds; elsewhere prints a line each time."""

    def __init__(self, every_s: float, stream: TextIO | None = None):
        self.every_s, self.stream = every_s, stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last = 0.0

    def due(self) -> bool:
        return time.perf_counter() - self.last >= self.every_s

    def show(self, text: str) -> None:
        self.last = time.perf_counter()
        if self.tty:
            self.stream.write("\r" + text[:200] + "\x1b[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def say(self, text: str) -> None:
        """A message on its own line (a reload, a pause), not overwritten by the next status."""
        self.stream.write(("\n" if self.tty else "") + text + "\n")
        self.stream.flush()
