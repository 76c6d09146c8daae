"""Finding a window by its title on X11 (python-xlib, imported lazily), its rectangle on the screen,
and giving it the keyboard focus.

SDL (pygame) and most toolkits set `_NET_WM_NAME` (UTF-8), not always `WM_NAME`: both are read.
Only mapped (viewable) windows count. A title matches a window whose title equals it, or, when no
title equals it, one that contains it; none or several is a CaptureError naming the title and the
windows there are.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from rayapp.envs.inputs.x11 import open_display
from rayapp.errors import CaptureError, InputDeviceError

__all__ = ["Rect", "XWindow", "WindowFinder", "choose_window"]


@dataclass(frozen=True)
class Rect:
    left: int
    top: int
    width: int
    height: int

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.left, self.top, self.width, self.height)

    def intersect(self, other: Rect) -> Rect | None:
        left, top = max(self.left, other.left), max(self.top, other.top)
        right = min(self.left + self.width, other.left + other.width)
        bottom = min(self.top + self.height, other.top + other.height)
        if right <= left or bottom <= top:
            return None
        return Rect(left, top, right - left, bottom - top)


@dataclass(frozen=True)
class XWindow:
    id: int
    title: str


def choose_window(title: str, windows: list[XWindow]) -> XWindow:
    """The one window `title` names (exact title first, else a unique substring), or a CaptureError
    that lists the candidates (pure: the X server is asked elsewhere)."""
    exact = [w for w in windows if w.title == title]
    found = exact or [w for w in windows if title in w.title]
    if len(found) == 1:
        return found[0]
    if not found:
        titles = sorted({w.title for w in windows if w.title})
        shown = ", ".join(repr(t) for t in titles[:12]) + (", ..." if len(titles) > 12 else "")
        raise CaptureError(
            f"no window titled {title!r} on the display (windows there: {shown or 'none with a title'}); "
            "start the game (e.g. `rayapp arcade`) or fix env.window_title"
        )
    shown = ", ".join(f"{w.title!r} (0x{w.id:x})" for w in found[:12])
    raise CaptureError(
        f"{len(found)} windows match the title {title!r}: {shown}; make env.window_title match exactly one "
        "(close the others, or give more of the title)"
    )


class WindowFinder:
    """One X display connection for looking windows up and following one window."""

    def __init__(self, display: str | None = None):
        if sys.platform == "win32":
            raise CaptureError(
                "capture=window finds windows on X11 only in this version; on Windows set env.capture=region "
                "with the window's rectangle"
            )
        try:
            self.d = open_display(display)
        except InputDeviceError as e:
            raise CaptureError(str(e)) from None
        from Xlib import X
        from Xlib import error as xerror

        self._X, self._xerror = X, xerror
        self.root = self.d.screen().root
        self._net_wm_name = self.d.intern_atom("_NET_WM_NAME")
        self._utf8 = self.d.intern_atom("UTF8_STRING")

    def _title(self, w) -> str:
        prop = w.get_full_property(self._net_wm_name, self._utf8)
        if prop is not None and prop.value:
            v = prop.value
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        name = w.get_wm_name()
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        return name or ""

    def windows(self) -> list[XWindow]:
        """Every viewable window with its title (a walk of the whole tree: 0.6 ms for a few windows)."""
        out: list[XWindow] = []
        todo = [self.root]
        while todo:
            parent = todo.pop()
            try:
                children = parent.query_tree().children
            except self._xerror.XError:  # gone while we looked
                continue
            for w in children:
                try:
                    if w.get_attributes().map_state != self._X.IsViewable:
                        continue
                    out.append(XWindow(w.id, self._title(w)))
                except self._xerror.XError:
                    continue
                todo.append(w)
        return out

    def find(self, title: str) -> XWindow:
        return choose_window(title, self.windows())

    def rect(self, win: XWindow) -> Rect:
        """The window's inside (no frame) in root coordinates; CaptureError once it is gone."""
        w = self.d.create_resource_object("window", win.id)
        try:
            g = w.get_geometry()
            origin = w.translate_coords(self.root, 0, 0)
        except self._xerror.XError:
            raise CaptureError(f"the window {win.title!r} (0x{win.id:x}) has closed") from None
        return Rect(-origin.x, -origin.y, int(g.width), int(g.height))

    def screen(self) -> Rect:
        g = self.root.get_geometry()
        return Rect(0, 0, int(g.width), int(g.height))

    def focus(self, win: XWindow) -> None:
        """Give the window the keyboard focus (where XTEST key events go)."""
        w = self.d.create_resource_object("window", win.id)
        caught = self._xerror.CatchError()  # SetInputFocus has no reply: its error comes by the handler
        w.set_input_focus(self._X.RevertToParent, self._X.CurrentTime, onerror=caught)
        self.d.sync()
        if caught.get_error() is not None:
            raise CaptureError(f"cannot focus the window {win.title!r} (0x{win.id:x}): it has closed")

    def close(self) -> None:
        try:
            self.d.close()
        except Exception:
            pass
