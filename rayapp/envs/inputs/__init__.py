"""Input backends: how an agent presses keys, moves the mouse and drives a virtual gamepad.

Every backend holds what `apply(action)` maps to until the next apply and releases everything on
`release_all()`, `close()`, leaving a `with` block, exceptions inside apply, and process exit. The
mappings (keys.py, mouse_grid.py, gamepad_map.py, deadzone.py) are pure Python; the devices (X11
XTEST, Windows SendInput, vgamepad) are imported only when a backend opens one.
"""

from rayapp.envs.inputs.base import InputBackend, release_every_backend, release_on_signals
from rayapp.envs.inputs.deadzone import DEFAULT_DEAD_ZONES, DeadZone
from rayapp.envs.inputs.factory import action_nvec, make_input_backend
from rayapp.envs.inputs.gamepad import GamepadBackend
from rayapp.envs.inputs.gamepad_map import GamepadMapping, GamepadState
from rayapp.envs.inputs.keyboard import KeyboardBackend
from rayapp.envs.inputs.keys import KEYS, KeyMapping
from rayapp.envs.inputs.mouse import MouseBackend
from rayapp.envs.inputs.mouse_grid import COMMANDS, MouseGrid

__all__ = [
    "COMMANDS",
    "DEFAULT_DEAD_ZONES",
    "KEYS",
    "DeadZone",
    "GamepadBackend",
    "GamepadMapping",
    "GamepadState",
    "InputBackend",
    "KeyMapping",
    "KeyboardBackend",
    "MouseBackend",
    "MouseGrid",
    "action_nvec",
    "make_input_backend",
    "release_every_backend",
    "release_on_signals",
]
