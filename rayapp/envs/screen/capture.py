"""Screen capture with `mss` (imported lazily): a whole monitor, a region, or a window found by title.

Frames come out as RGB (H, W, 3) uint8, like the emulator's, area-resized to `env.frame_size` when
it is set (so that a window showing an Atari frame scaled up comes back as the 210x160 frame it
shows, and `data.crop` means the same pixels as in the recordings). Regions are clipped to the
screen (X11 refuses a grab outside the root window): the part off the screen reads black, so the
frame keeps its shape. A window is followed: its rectangle is looked up again every
`check_every_s`, so a moved window is still captured and a closed one is an error, not a stale
picture.
"""

from __future__ import annotations

import os
import sys
import time

import cv2
import numpy as np

from rayapp.config import EnvConfig
from rayapp.envs.screen.windows import Rect, WindowFinder, XWindow
from rayapp.errors import CaptureError

__all__ = ["ScreenCapture", "bgra_to_frame", "open_mss"]


def open_mss(display: str | None = None):
    """An `mss.MSS` for `display` (X11; default $DISPLAY), or a CaptureError saying what to do."""
    try:
        import mss
        from mss.exception import ScreenShotError
    except ImportError:
        raise CaptureError("screen capture needs mss: pip install 'rayapp[gamepc]'") from None
    kwargs = {}
    if sys.platform.startswith("linux"):
        display = display or os.environ.get("DISPLAY", "")
        if not display:
            raise CaptureError(
                "no X display: DISPLAY is not set (run on the game's desktop, or start Xvfb and set DISPLAY=:N "
                "or env.display)"
            )
        kwargs["display"] = display
    try:
        return mss.MSS(**kwargs) if hasattr(mss, "MSS") else mss.mss(**kwargs)
    except ScreenShotError as e:
        raise CaptureError(f"cannot open the screen {display or ''!r} for capture: {e}") from None


def bgra_to_frame(img: np.ndarray, frame_size: tuple[int, int] = (0, 0)) -> np.ndarray:
    """A captured BGRA image -> the RGB frame, area-resized to `frame_size` (rows, cols) unless (0, 0).

    The alpha channel goes first, so the resize moves three channels, not four: the same pixels as
    resizing first (area averaging is per channel), in less time (benchmarks/screen.py, part 1).
    """
    rgb = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if tuple(frame_size) != (0, 0) and rgb.shape[:2] != tuple(frame_size):
        rgb = cv2.resize(rgb, (frame_size[1], frame_size[0]), interpolation=cv2.INTER_AREA)
    return rgb


class ScreenCapture:
    def __init__(self, cfg: EnvConfig, check_every_s: float = 0.5):
        self.cfg = cfg
        self.check_every_s = check_every_s
        self.frame_size = tuple(int(x) for x in cfg.frame_size)
        self.finder: WindowFinder | None = None
        self.window: XWindow | None = None
        self.sct = open_mss(cfg.display or None)
        try:
            mons = self.sct.monitors
            self.screen = Rect(**{k: int(mons[0][k]) for k in ("left", "top", "width", "height")})
            self.rect: Rect | None = None
            if cfg.capture == "window":
                self.finder = WindowFinder(cfg.display or None)
                self.window = self.finder.find(cfg.window_title)
            self.locate()
        except BaseException:
            self.close()
            raise

    # ---- where ---------------------------------------------------------------------------------
    def _target(self) -> Rect:
        c = self.cfg
        if c.capture == "window":
            return self.finder.rect(self.window)
        if c.capture == "region":
            if len(c.region) != 4:
                raise CaptureError(f"env.region must be [left, top, width, height], got {c.region}")
            return Rect(*(int(v) for v in c.region))
        mons = self.sct.monitors
        if not 0 <= c.monitor < len(mons):
            shown = ", ".join(f"{i}: {m['width']}x{m['height']}+{m['left']}+{m['top']}" for i, m in enumerate(mons))
            raise CaptureError(f"env.monitor={c.monitor}: no such monitor (there are {shown})")
        m = mons[c.monitor]
        return Rect(int(m["left"]), int(m["top"]), int(m["width"]), int(m["height"]))

    def locate(self) -> Rect:
        """Look the target up again (a window may have moved or closed)."""
        r = self._target()
        if self.rect is not None and (r.width, r.height) != (self.rect.width, self.rect.height) and self.frame_size == (0, 0):
            raise CaptureError(
                f"the captured {self.cfg.capture} changed size from {self.rect.width}x{self.rect.height} to "
                f"{r.width}x{r.height}: set env.frame_size to keep frames one size"
            )
        visible = r.intersect(self.screen)
        if visible is None:
            raise CaptureError(
                f"the {self.cfg.capture} to capture ({r.width}x{r.height} at {r.left},{r.top}) lies outside the "
                f"screen ({self.screen.width}x{self.screen.height})"
            )
        self.rect, self.visible = r, visible
        self._checked = time.perf_counter()
        return r

    def focus(self) -> None:
        if self.window is not None:
            self.finder.focus(self.window)

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        if self.frame_size != (0, 0):
            return (self.frame_size[0], self.frame_size[1], 3)
        return (self.rect.height, self.rect.width, 3)

    # ---- what ----------------------------------------------------------------------------------
    def grab_bgra(self) -> np.ndarray:
        """The target as captured, BGRA (H, W, 4), before any resize."""
        if self.window is not None and time.perf_counter() - self._checked > self.check_every_s:
            self.locate()
        v, r = self.visible, self.rect
        try:
            shot = self.sct.grab({"left": v.left, "top": v.top, "width": v.width, "height": v.height})
        except Exception as e:  # mss's ScreenShotError, an X error: the screen went away
            raise CaptureError(f"screen capture failed: {e}") from None
        img = np.frombuffer(shot.raw, np.uint8).reshape(v.height, v.width, 4)
        if v != r:
            full = np.zeros((r.height, r.width, 4), np.uint8)
            dx, dy = v.left - r.left, v.top - r.top
            full[dy : dy + v.height, dx : dx + v.width] = img
            img = full
        return img

    def grab(self) -> np.ndarray:
        """One RGB frame (frame_shape)."""
        return bgra_to_frame(self.grab_bgra(), self.frame_size)

    def close(self) -> None:
        for thing in (self.sct, self.finder):
            try:
                if thing is not None:
                    thing.close()
            except Exception:
                pass
        self.finder = None
