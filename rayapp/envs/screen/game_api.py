"""`env.reward: game_api`: reward, episode end and game state from a game mod over TCP.

The mod (a GTA V script, a Minecraft plugin, ...) listens on `env.game_api_address` (host:port);
`GameApiReward` connects when the env is made and speaks JSON lines, one request and one answer
per line (UTF-8, newline-terminated):

    -> {"op": "reset"}                       at every reset, after the first frame is captured
    <- {"speed": 0.0, "position": [0, 0, 0]}  any state: it goes into reset's info
    -> {"op": "step", "step": 12}            after every step's capture
    <- {"reward": 1.0, "done": false, "speed": 12.3, "position": [1.5, 2.0, 0.0]}

`reward` (default 0) is the reward since the previous request, `done` (default false) ends the
episode; every other key goes into `info` (and so the replay's extras). A mod that refuses the
connection, closes it, answers nonsense or takes longer than `env.game_api_timeout_s` to answer
makes the step fail with a one-line GameApiError naming the address (ScreenEnv then releases every
input); the connection is then dropped, and the next reset connects again. `rayapp.envs.screen.fake_game_api` is a stand-in server for tests and trying it out.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import numpy as np

from rayapp.envs.screen.reward_source import RewardReading, RewardSource
from rayapp.errors import ConfigError, GameApiError

__all__ = ["GameApiReward", "parse_address"]

_RESERVED = ("reward", "done")


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"env.game_api_address must be host:port, e.g. 127.0.0.1:7777, got {address!r}")
    return host.strip("[]"), int(port)


class GameApiReward(RewardSource):
    name = "game_api"

    def __init__(self, address: str, timeout_s: float = 2.0):
        self.address, self.timeout_s = address, timeout_s
        self.host, self.port = parse_address(address)
        self.steps = 0
        self.sock: socket.socket | None = None
        self.file = None
        self._connect()

    def _connect(self) -> None:
        try:
            self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        except ConnectionRefusedError:
            raise GameApiError(self._say("refused the connection: start the game with its mod (or "
                                         f"`python -m rayapp.envs.screen.fake_game_api --port {self.port}`), or set env.game_api_address")) from None  # fmt: skip
        except TimeoutError:
            raise GameApiError(self._say(f"did not accept a connection within {self.timeout_s:g} s (env.game_api_timeout_s): "
                                         "is the game running and the address right?")) from None  # fmt: skip
        except OSError as e:
            raise GameApiError(
                self._say(f"cannot be reached ({e.strerror or e}): check env.game_api_address")
            ) from None
        self.sock.settimeout(self.timeout_s)
        self.file = self.sock.makefile("rb")

    def _say(self, what: str) -> str:
        return f"the game API at {self.address} {what}"

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Send one line, read one answer (a JSON object). After a failure the connection is
        dropped (a late answer must not pass for the next one); the next request connects again."""
        if self.sock is None:
            self._connect()
        try:
            self.sock.sendall((json.dumps(msg) + "\n").encode())
            line = self.file.readline()
        except TimeoutError:
            self.close()
            raise GameApiError(self._say(f"did not answer within {self.timeout_s:g} s (env.game_api_timeout_s): is the "
                                         "game paused or its mod stuck? Restart it, or raise the timeout")) from None  # fmt: skip
        except OSError as e:
            self.close()
            raise GameApiError(self._say(f"failed ({e.strerror or e}): restart the game's mod")) from None
        if not line:
            self.close()
            raise GameApiError(self._say("closed the connection: restart the game's mod"))
        try:
            data = json.loads(line)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise GameApiError(self._say(f"answered a line that is not a JSON object: {line[:80]!r}"))
        return data

    def reset(self, frame: np.ndarray) -> dict[str, Any]:
        self.steps = 0
        data = self.request({"op": "reset"})
        return {k: v for k, v in data.items() if k not in _RESERVED}

    def step(self, frame: np.ndarray) -> RewardReading:
        self.steps += 1
        data = self.request({"op": "step", "step": self.steps})
        try:
            reward, done = float(data.get("reward", 0.0)), data.get("done", False)
        except (TypeError, ValueError):
            raise GameApiError(
                self._say(f"sent a reward that is not a number: {data.get('reward')!r}")
            ) from None
        if not isinstance(done, bool):
            raise GameApiError(self._say(f"sent a done that is not true or false: {done!r}"))
        return RewardReading(reward, done, {k: v for k, v in data.items() if k not in _RESERVED})

    def close(self) -> None:
        for thing in (getattr(self, "file", None), self.sock):
            try:
                if thing is not None:
                    thing.close()
            except OSError:
                pass
        self.sock = self.file = None
