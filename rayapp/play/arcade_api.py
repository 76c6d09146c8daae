"""`rayapp arcade --game-api HOST:PORT` (`arcade.game_api`): the arcade answers the game-API
protocol of rayapp.envs.screen.game_api, as a game mod would, with the emulator's own reward and
episode end, so `env.reward: game_api` can play the arcade window through ScreenEnv and know the
true score:

    -> {"op": "reset"}             the game starts again (at the arcade's next frame); answer once it has:
    <- {"score": 0.0, "lives": 5}
    -> {"op": "step", "step": 12}
    <- {"reward": 3.0, "done": false, "score": 7.0, "lives": 4, "frame": 1234}

`reward` is the sum of the emulator's rewards over the frames since the previous request, `done`
says a game ended (game over, or the arcade's time limit) since then. The server runs in a thread;
the emulator is only touched by the arcade's own loop (`service()` once a frame).
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

from rayapp.envs.screen.game_api import parse_address

__all__ = ["ArcadeGameApi"]


class ArcadeGameApi:
    """A JSON-lines server, one client at a time. `on_frame(reward, ended)` after each emulator
    frame, `service(reset)` once a frame in the arcade's loop (performs a requested reset)."""

    def __init__(self, address: str, state: Any = None, reset_timeout_s: float = 5.0):
        host, port = parse_address(address)
        self.state = state or (lambda: {})  # extras for every answer: score, lives, frame
        self.reset_timeout_s = reset_timeout_s
        self.server = socket.create_server((host, port))
        self.address = f"{host}:{self.server.getsockname()[1]}"
        self.server.settimeout(0.1)  # accept() wakes up to see close()
        self._lock = threading.Lock()
        self._reward, self._done = 0.0, False
        self._pending: list[threading.Event] = []
        self._stop = threading.Event()
        self._conn: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, name="arcade-game-api", daemon=True)
        self._thread.start()

    # ---- the arcade's side ---------------------------------------------------------------------
    def on_frame(self, reward: float, ended: bool) -> None:
        with self._lock:
            self._reward += reward
            self._done = self._done or ended

    def service(self, reset) -> None:
        """Called by the arcade's loop: a reset asked for since the last frame happens now."""
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        reset()
        with self._lock:
            self._reward, self._done = 0.0, False
        for ev in pending:
            ev.set()

    # ---- the client's side ---------------------------------------------------------------------
    def _answer(self, req: dict) -> dict[str, Any]:
        if req.get("op") == "reset":
            ev = threading.Event()
            with self._lock:
                self._pending.append(ev)
            ev.wait(self.reset_timeout_s)
            return dict(self.state())
        with self._lock:
            reward, done = self._reward, self._done
            self._reward, self._done = 0.0, False
        return {**self.state(), "reward": reward, "done": done}

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._conn = conn
            conn.settimeout(None)
            try:
                with conn, conn.makefile("rb") as f:
                    for line in f:
                        if self._stop.is_set():
                            return
                        try:
                            req = json.loads(line)
                        except ValueError:
                            req = None
                        if not isinstance(req, dict):
                            conn.sendall(b'{"error": "not a JSON object"}\n')
                            continue
                        conn.sendall((json.dumps(self._answer(req)) + "\n").encode())
            except OSError:
                pass  # the client went away: wait for the next one

    def close(self) -> None:
        self._stop.set()
        self.server.close()
        if self._conn is not None:
            try:
                self._conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)
