"""Fixed-rate stepping: frame boundaries at t0 + k * period, how late each step met its boundary,
and the boundaries it missed (dropped frames).

A live game does not wait for the agent. A step that comes back before its boundary sleeps to it
(the last `spin_s` of the wait busy-waits: `time.sleep` alone wakes up to a millisecond late); a
step that comes back after one or more whole periods have passed drops those frames and captures
at once, at the latest boundary passed, so the schedule never drifts and `late_ms` stays below one
period.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["FrameClock", "FreeClock", "Tick"]


@dataclass(frozen=True)
class Tick:
    index: int  # the boundary this step captured at (frames since start, dropped ones included)
    late_ms: float  # how long after that boundary the step woke up
    dropped: int  # boundaries this step missed


class FrameClock:
    def __init__(self, fps: float, now: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep, spin_s: float = 0.0005):  # fmt: skip
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.fps = float(fps)
        self.period = 1.0 / self.fps
        self._now, self._sleep, self.spin_s = now, sleep, spin_s
        self.start()

    def start(self) -> float:
        """Boundary 0 is now; counters restart."""
        self.t0 = self._now()
        self.index = 0
        self.dropped = 0
        return self.t0

    def resync(self) -> None:
        """The next boundary is one period from now, the counters kept (after a pause: the time
        paused is no dropped frames)."""
        self.t0 = self._now() - self.index * self.period

    def boundary(self, k: int) -> float:
        return self.t0 + k * self.period

    def wait(self) -> Tick:
        """Sleep to the next boundary, or, past it, skip to the latest one passed."""
        k = self.index + 1
        target = self.boundary(k)
        t = self._now()
        missed = 0
        if t < target:
            rest = target - t - self.spin_s
            if rest > 0:
                self._sleep(rest)
            t = self._now()
            while t < target:
                t = self._now()
        else:
            missed = int((t - target) // self.period)
            k += missed
            target = self.boundary(k)
        self.index = k
        self.dropped += missed
        return Tick(k, (t - target) * 1000.0, missed)


class FreeClock:
    """No fixed rate (`play.fps: 0`): every step is the next frame, as fast as the loop goes; never late."""

    fps = 0.0
    period = 0.0

    def __init__(self) -> None:
        self.start()

    def start(self) -> float:
        self.index = 0
        self.dropped = 0
        return time.perf_counter()

    def resync(self) -> None:
        pass

    def wait(self) -> Tick:
        self.index += 1
        return Tick(self.index, 0.0, 0)
