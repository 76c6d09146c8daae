"""Key names and what each one is on a real keyboard, and the action -> keys mapping (pure Python).

A key name (`a`, `space`, `left`, `lshift`, `f5`) stands for one physical key: its X11 keysym name
(XTEST on Linux) and its set-1 scan code (Windows `SendInput` with KEYEVENTF_SCANCODE, which DirectX
games read where they ignore virtual-key codes; `extended` keys are sent with the E0 prefix flag).
"""

from __future__ import annotations

import difflib
import string
from dataclasses import dataclass

from rayapp.errors import ConfigError

__all__ = ["Key", "KEYS", "KeyMapping", "key", "win32_key_flags"]


@dataclass(frozen=True)
class Key:
    name: str
    keysym: str  # X11 keysym name (Xlib.XK.string_to_keysym)
    scan: int  # set-1 make code
    extended: bool = False  # sent with KEYEVENTF_EXTENDEDKEY (the E0 prefix)


def _table() -> dict[str, Key]:
    out: dict[str, Key] = {}

    def add(name: str, keysym: str, scan: int, extended: bool = False) -> None:
        out[name] = Key(name, keysym, scan, extended)

    rows = ("qwertyuiop", 0x10), ("asdfghjkl", 0x1E), ("zxcvbnm", 0x2C)
    for letters, first in rows:
        for i, c in enumerate(letters):
            add(c, c, first + i)
    for i, d in enumerate("1234567890"):
        add(d, d, 0x02 + i)
    for i in range(10):
        add(f"f{i + 1}", f"F{i + 1}", 0x3B + i)
    add("f11", "F11", 0x57)
    add("f12", "F12", 0x58)
    for name, keysym, scan in [
        ("escape", "Escape", 0x01), ("minus", "minus", 0x0C), ("equal", "equal", 0x0D),
        ("backspace", "BackSpace", 0x0E), ("tab", "Tab", 0x0F), ("bracketleft", "bracketleft", 0x1A),
        ("bracketright", "bracketright", 0x1B), ("enter", "Return", 0x1C), ("lctrl", "Control_L", 0x1D),
        ("semicolon", "semicolon", 0x27), ("apostrophe", "apostrophe", 0x28), ("grave", "grave", 0x29),
        ("lshift", "Shift_L", 0x2A), ("backslash", "backslash", 0x2B), ("comma", "comma", 0x33),
        ("period", "period", 0x34), ("slash", "slash", 0x35), ("rshift", "Shift_R", 0x36),
        ("lalt", "Alt_L", 0x38), ("space", "space", 0x39), ("capslock", "Caps_Lock", 0x3A),
    ]:  # fmt: skip
        add(name, keysym, scan)
    for name, keysym, scan in [
        ("rctrl", "Control_R", 0x1D), ("ralt", "Alt_R", 0x38), ("home", "Home", 0x47),
        ("up", "Up", 0x48), ("pageup", "Prior", 0x49), ("left", "Left", 0x4B), ("right", "Right", 0x4D),
        ("end", "End", 0x4F), ("down", "Down", 0x50), ("pagedown", "Next", 0x51),
        ("insert", "Insert", 0x52), ("delete", "Delete", 0x53),
    ]:  # fmt: skip
        add(name, keysym, scan, extended=True)
    return out


KEYS: dict[str, Key] = _table()
# other spellings people write in configs
ALIASES = {
    "esc": "escape", "return": "enter", "shift": "lshift", "ctrl": "lctrl", "control": "lctrl",
    "alt": "lalt", "del": "delete", "ins": "insert", "pgup": "pageup", "pgdn": "pagedown",
    "arrowleft": "left", "arrowright": "right", "arrowup": "up", "arrowdown": "down", "caps": "capslock",
}  # fmt: skip
assert set(string.ascii_lowercase) <= set(KEYS)


def key(name: str, where: str = "key") -> Key:
    """The key called `name` (case-insensitive, aliases allowed), or a ConfigError naming it and the
    valid names closest to it."""
    n = str(name).strip().lower()
    n = ALIASES.get(n, n)
    if n in KEYS:
        return KEYS[n]
    close = difflib.get_close_matches(n, [*KEYS, *ALIASES], n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(
        f"{where}: unknown key name {name!r}{hint} (valid: letters, digits, f1-f12, space, enter, "
        f"escape, tab, lshift, lctrl, lalt, up/down/left/right, ...: rayapp.envs.inputs.keys.KEYS)"
    )


def win32_key_flags(k: Key, down: bool) -> int:
    """dwFlags of the KEYBDINPUT that presses or releases `k` by scan code."""
    flags = 0x0008  # KEYEVENTF_SCANCODE
    if k.extended:
        flags |= 0x0001  # KEYEVENTF_EXTENDEDKEY
    if not down:
        flags |= 0x0002  # KEYEVENTF_KEYUP
    return flags


class KeyMapping:
    """Discrete actions -> the keys held for the whole step, e.g. {"NOOP": [], "LEFT": ["a"],
    "FIRE+RIGHT": ["space", "d"]}. Actions are numbered in the mapping's order (action 0 is the
    first); `keys(action)` takes the number or the name."""

    def __init__(self, actions: dict[str, list[str]], where: str = "inputs.keys"):
        if not isinstance(actions, dict) or not actions:
            raise ConfigError(
                f"{where}: needs at least one action, e.g. {{NOOP: [], LEFT: [a], FIRE+RIGHT: [space, d]}}"
            )
        self.names: list[str] = [str(a) for a in actions]
        self._keys: list[tuple[Key, ...]] = []
        for name, keys in actions.items():
            if isinstance(keys, str):
                keys = [keys]
            if not isinstance(keys, (list, tuple)):
                raise ConfigError(f"{where}.{name}: expects a list of key names, got {keys!r}")
            found = tuple(dict.fromkeys(key(k, f"{where}.{name}") for k in keys))
            self._keys.append(found)

    def __len__(self) -> int:
        return len(self.names)

    def index(self, action: int | str) -> int:
        if isinstance(action, str):
            if action not in self.names:
                close = difflib.get_close_matches(action, self.names, n=3)
                raise ConfigError(
                    f"unknown action {action!r} (actions: {', '.join(self.names)}; close: {close})"
                )
            return self.names.index(action)
        i = int(action)
        if not 0 <= i < len(self.names):
            raise ValueError(f"action {action} out of range: this mapping has {len(self.names)} actions")
        return i

    def keys(self, action: int | str) -> tuple[Key, ...]:
        return self._keys[self.index(action)]

    def action_for(self, held: set[str] | frozenset[str] | list[str]) -> int | None:
        """The action whose keys are exactly `held` (key names or aliases), or None: how a recorder
        turns a person's keys into the model's action space."""
        want = {key(k).name for k in held}
        for i, keys in enumerate(self._keys):
            if {k.name for k in keys} == want:
                return i
        return None

    def held_action(self, held: set[str] | frozenset[str] | list[str]) -> int:
        """The action the keys `held` (key names) play, by `rayapp arcade`'s rule: of the actions whose
        keys are all held, the one with the most keys (the first on ties); none of them: the first
        action without keys (NOOP), else action 0. How a recorder turns a person's keys into the
        model's action space; keys no action uses are ignored."""
        names = {key(k).name for k in held}
        full = [i for i, keys in enumerate(self._keys) if keys and all(k.name in names for k in keys)]
        if full:
            return max(full, key=lambda i: (len(self._keys[i]), -i))
        idle = [i for i, keys in enumerate(self._keys) if not keys]
        return idle[0] if idle else 0
