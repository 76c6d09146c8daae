"""The mouse backend: factorised (command, x, y) actions over a grid of the capture region."""

from __future__ import annotations

from typing import Any

from rayapp.envs.inputs.base import InputBackend, _release_each
from rayapp.envs.inputs.keyboard import open_sink
from rayapp.envs.inputs.mouse_grid import MouseGrid

__all__ = ["MouseBackend"]


class MouseBackend(InputBackend):
    """`apply((command, i, j))`: buttons of the previous step that this command does not hold are
    released, the pointer moves to cell (i, j)'s centre (unless the command is `none`), then the
    command's button goes down. A click's button stays down for the step and is released at the
    next apply, so a game polling once per frame sees it; a hold's stays down while repeated."""

    kind = "mouse"

    def __init__(self, grid: MouseGrid, sink: Any = None, display: str | None = None):
        self.grid = grid
        self.sink = sink if sink is not None else open_sink(display)
        self._held: dict[str, str] = {}  # button -> "click" | "hold"
        self.position: tuple[int, int] | None = None
        super().__init__()

    def _apply(self, action) -> None:
        command, point = self.grid.decode(action)
        keep = command.button if command.hold == "hold" else None
        for button in [b for b in self._held if b != keep]:
            self.sink.button(button, False)
            del self._held[button]
        if command.moves:
            self.sink.move(*point)
            self.position = point
        if command.button and command.button not in self._held:
            self._held[command.button] = command.hold
            self.sink.button(command.button, True)
        self.sink.flush()

    def _release_all(self) -> None:
        held, self._held = list(self._held), {}
        try:
            _release_each(held, lambda b: self.sink.button(b, False))
        finally:
            self.sink.flush()

    def pressed(self) -> tuple[str, ...]:
        return tuple(sorted(f"mouse_{b}" for b in self._held))

    def _close(self) -> None:
        self.sink.close()
