"""Dead-zone translation for sticks and triggers (pure Python).

A game ignores a stick deflected less than its dead zone (XInput's defaults: 7849/32767 = 0.24 left,
8689/32767 = 0.27 right, 30/255 = 0.12 for triggers) and reads everything beyond an outer limit as
full. A policy output m in [0, 1] is sent as `inner + m * (outer - inner)` (the inverse of the scaled
dead zone games apply, as the GTA V player in the seeds did), so a small output still moves the car
and the game reads back m itself. Radial mode translates the stick's length and keeps its direction
(what most games do); axial mode translates each axis on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rayapp.errors import ConfigError

__all__ = ["DeadZone", "DEFAULT_DEAD_ZONES", "AXES"]

AXES = ("left_stick", "right_stick", "left_trigger", "right_trigger")


@dataclass(frozen=True)
class DeadZone:
    inner: float = 0.0  # deflection the game ignores, as a fraction of full
    outer: float = 1.0  # deflection the game already reads as full
    mode: str = "radial"  # radial | axial (sticks; a trigger has one axis)

    def __post_init__(self) -> None:
        if not 0.0 <= self.inner < self.outer <= 1.0:
            raise ConfigError(
                f"dead zone needs 0 <= inner < outer <= 1, got inner={self.inner}, outer={self.outer}"
            )
        if self.mode not in ("radial", "axial"):
            raise ConfigError(f"dead zone mode must be radial or axial, got {self.mode!r}")

    @classmethod
    def from_config(cls, value, default: DeadZone, where: str) -> DeadZone:
        if isinstance(value, DeadZone):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expects {{inner: 0.24, outer: 1.0, mode: radial}}, got {value!r}")
        bad = set(value) - {"inner", "outer", "mode"}
        if bad:
            raise ConfigError(f"{where}: unknown keys {sorted(bad)} (known: inner, outer, mode)")
        try:
            return cls(float(value.get("inner", default.inner)), float(value.get("outer", default.outer)),
                       str(value.get("mode", default.mode)))  # fmt: skip
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    # ---- policy output -> device deflection -------------------------------------------------
    def translate_1d(self, m: float) -> float:
        """Device deflection in [-outer, outer] for one axis output m in [-1, 1]; 0 stays 0."""
        a = min(abs(float(m)), 1.0)
        if a == 0.0:
            return 0.0
        return math.copysign(self.inner + a * (self.outer - self.inner), m)

    def translate(self, x: float, y: float) -> tuple[float, float]:
        """Device deflection of a stick output (x, y), each in [-1, 1]."""
        if self.mode == "axial":
            return self.translate_1d(x), self.translate_1d(y)
        r = math.hypot(x, y)
        if r == 0.0:
            return 0.0, 0.0
        d = self.translate_1d(min(r, 1.0))
        ux, uy = _unit(x, y, r)
        return ux * d, uy * d

    def quantise(self, x: float, y: float, scale: int) -> tuple[int, int]:
        """Integer device values (full deflection = `scale`) of a stick output: translated, rounded,
        and never rounded back into the game's dead zone (a non-zero output always moves)."""
        dx, dy = self.translate(x, y)
        qx, qy = self._clip(round(dx * scale), scale), self._clip(round(dy * scale), scale)
        if self.mode == "axial":
            return self._past_inner(qx, x, scale), self._past_inner(qy, y, scale)
        if (x or y) and self.reading(qx / scale, qy / scale) == (0.0, 0.0):
            # rounding left it on the dead zone's edge: push the longer component out, one step at a time
            while math.hypot(qx, qy) <= self.inner * scale:
                if abs(dx) >= abs(dy):
                    qx = self._clip(qx + (1 if dx > 0 else -1), scale)
                else:
                    qy = self._clip(qy + (1 if dy > 0 else -1), scale)
        return qx, qy

    def quantise_1d(self, m: float, scale: int) -> int:
        q = self._clip(round(self.translate_1d(m) * scale), scale)
        return self._past_inner(q, m, scale)

    def _past_inner(self, q: int, m: float, scale: int) -> int:
        if m == 0:
            return 0
        least = math.floor(self.inner * scale) + 1  # the first device value beyond the dead zone
        return int(math.copysign(max(abs(q), least), m))

    @staticmethod
    def _clip(q: int, scale: int) -> int:
        return max(-scale, min(scale, int(q)))

    # ---- what a game reads (the scaled dead zone games apply; used by tests and docs) -------
    def reading_1d(self, d: float) -> float:
        a = abs(d)
        if a <= self.inner:
            return 0.0
        return math.copysign((min(a, self.outer) - self.inner) / (self.outer - self.inner), d)

    def reading(self, dx: float, dy: float) -> tuple[float, float]:
        if self.mode == "axial":
            return self.reading_1d(dx), self.reading_1d(dy)
        r = math.hypot(dx, dy)
        if r <= self.inner:
            return 0.0, 0.0
        g = self.reading_1d(r)
        ux, uy = _unit(dx, dy, r)
        return ux * g, uy * g


def _unit(x: float, y: float, r: float) -> tuple[float, float]:
    """(x, y) / r made exactly unit length (for subnormal inputs, x / r and y / r are not)."""
    ux, uy = x / r, y / r
    n = math.hypot(ux, uy)
    return ux / n, uy / n


# XInput's documented defaults (XINPUT_GAMEPAD_*_THUMB_DEADZONE, XINPUT_GAMEPAD_TRIGGER_THRESHOLD)
DEFAULT_DEAD_ZONES = {
    "left_stick": DeadZone(7849 / 32767, 1.0, "radial"),
    "right_stick": DeadZone(8689 / 32767, 1.0, "radial"),
    "left_trigger": DeadZone(30 / 255, 1.0, "axial"),
    "right_trigger": DeadZone(30 / 255, 1.0, "axial"),
}
