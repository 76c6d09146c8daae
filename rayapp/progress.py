"""Progress bars that also read well in logs (`ray job logs`, CI): a live bar on a terminal,
a line every `log_every` seconds otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm.auto import tqdm

__all__ = ["Progress", "say"]


def say(text: str, stream=None) -> None:
    """One line to `stream` (default stderr), written to the stream itself: Ray Train patches
    `print` in its workers to go through the root logger *and* the (wrapped) stream, which printed
    every line twice."""
    out = stream or sys.stderr
    out.write(text.rstrip() + "\n")
    out.flush()


class Progress:
    def __init__(
        self,
        total: float | None,
        desc: str,
        unit: str = "it",
        log_every: float = 10.0,
        stream=None,
        initial: float = 0,
    ):
        # stream: where the lines go (default stderr); Ray workers pass stdout, because the CLI
        # sends their stderr (Ray's logs, tracebacks) to the log file only (rayapp.console);
        # initial: where a resumed run starts (the bar continues from there, not from 0)
        self.stream = stream
        self.tty = sys.stderr.isatty() and stream is None
        self.total, self.desc, self.unit = total, desc, unit
        self.n = float(initial)
        self.initial = float(initial)
        self.postfix: dict[str, Any] = {}
        self.log_every = log_every
        self._last = 0.0
        self._t0 = time.monotonic()
        self.bar = (
            tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=True, initial=initial)
            if self.tty
            else None
        )

    def update(self, n: float = 1, **postfix: Any) -> None:
        self.n += n
        self.postfix.update(postfix)
        if self.bar is not None:
            self.bar.set_postfix(self.postfix, refresh=False)
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.log_every or (self.total is not None and self.n >= self.total):
            self._last = now
            self._print()

    def _print(self) -> None:
        total = f"/{self.total:g}" if self.total is not None else ""
        extra = " ".join(f"{k}={v}" for k, v in self.postfix.items())
        say(
            f"{self.desc}: {self.n:g}{total} {self.unit} [{time.monotonic() - self._t0:.0f}s] {extra}",
            self.stream,
        )

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            say(msg, self.stream)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.n > self.initial and self._last == 0.0:
            self._print()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
