"""The factorised mouse action (pure Python): a command head, an x head and a y head.

A pointer on 1920x1080 as one head would be 2 million actions; as (command, x, y) over a grid of the
capture region it is three small heads (the factorisation Hakisa uses). Cell (i, j) is aimed at its
centre, in absolute screen pixels of the region.
"""

from __future__ import annotations

from dataclasses import dataclass

from rayapp.errors import ConfigError

__all__ = ["COMMANDS", "MouseGrid", "MouseCommand", "win32_absolute"]

# command -> (moves the pointer, button, how the button is held)
#   "click": pressed at this apply, released at the next one (held for one step, never merged)
#   "hold":  pressed while consecutive steps ask for it (drag), released when they stop
COMMANDS: dict[str, tuple[bool, str | None, str | None]] = {
    "none": (False, None, None),
    "move": (True, None, None),
    "left_click": (True, "left", "click"),
    "right_click": (True, "right", "click"),
    "middle_click": (True, "middle", "click"),
    "left_hold": (True, "left", "hold"),
    "right_hold": (True, "right", "hold"),
    "scroll_up": (True, "scroll_up", "click"),
    "scroll_down": (True, "scroll_down", "click"),
}


@dataclass(frozen=True)
class MouseCommand:
    name: str
    moves: bool
    button: str | None
    hold: str | None


class MouseGrid:
    """`commands` (names from COMMANDS) x `cols` x `rows` over `region` = (left, top, width, height)
    in screen pixels. An action is (command, x, y) indices, e.g. from a MultiDiscrete(nvec)."""

    def __init__(self, commands: list[str], cols: int, rows: int, region: tuple[int, int, int, int],
                 where: str = "inputs"):  # fmt: skip
        if not commands:
            raise ConfigError(f"{where}.mouse_commands: needs at least one command of {list(COMMANDS)}")
        bad = [c for c in commands if c not in COMMANDS]
        if bad:
            raise ConfigError(f"{where}.mouse_commands: unknown {bad}; valid: {', '.join(COMMANDS)}")
        if int(cols) < 1 or int(rows) < 1:
            raise ConfigError(f"{where}.mouse_grid: [cols, rows] must be >= 1, got [{cols}, {rows}]")
        left, top, width, height = (int(v) for v in region)
        if width < 1 or height < 1:
            raise ConfigError(f"mouse region must have a positive size, got {region}")
        self.commands = [MouseCommand(c, *COMMANDS[c]) for c in commands]
        self.cols, self.rows = int(cols), int(rows)
        self.region = (left, top, width, height)

    def with_region(self, region: tuple[int, int, int, int]) -> MouseGrid:
        """The same heads over another region (the game window moved or was resized)."""
        return MouseGrid([c.name for c in self.commands], self.cols, self.rows, region)

    @property
    def nvec(self) -> tuple[int, int, int]:
        """Sizes of the three heads: (commands, cols, rows)."""
        return len(self.commands), self.cols, self.rows

    def point(self, i: int, j: int) -> tuple[int, int]:
        """Screen pixel at the centre of grid cell (column i, row j)."""
        if not (0 <= i < self.cols and 0 <= j < self.rows):
            raise ValueError(f"mouse cell ({i}, {j}) outside the {self.cols}x{self.rows} grid")
        left, top, width, height = self.region
        return left + int((i + 0.5) * width / self.cols), top + int((j + 0.5) * height / self.rows)

    def cell(self, x: int, y: int) -> tuple[int, int]:
        """The grid cell holding screen pixel (x, y), clipped to the grid (a recorder's inverse)."""
        left, top, width, height = self.region
        i = int((x - left) * self.cols // width)
        j = int((y - top) * self.rows // height)
        return min(max(i, 0), self.cols - 1), min(max(j, 0), self.rows - 1)

    def decode(self, action) -> tuple[MouseCommand, tuple[int, int]]:
        """(command, screen point) of an action (command index, x index, y index)."""
        c, i, j = (int(v) for v in action)
        if not 0 <= c < len(self.commands):
            raise ValueError(f"mouse command {c} out of range: {len(self.commands)} commands")
        return self.commands[c], self.point(i, j)


def win32_absolute(x: int, y: int, screen: tuple[int, int, int, int]) -> tuple[int, int]:
    """MOUSEINPUT dx, dy for MOUSEEVENTF_ABSOLUTE | MOUSEEVENTF_VIRTUALDESK: the pixel (x, y) of the
    virtual desktop `screen` = (left, top, width, height) scaled to 0..65535."""
    left, top, width, height = screen
    fx = (x - left) * 65535 // max(width - 1, 1)
    fy = (y - top) * 65535 // max(height - 1, 1)
    return min(max(fx, 0), 65535), min(max(fy, 0), 65535)
