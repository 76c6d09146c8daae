"""A stand-in for a game mod's reward API (rayapp.envs.screen.game_api), for tests and trying the
`game_api` reward source without a game:

    python -m rayapp.envs.screen.fake_game_api --port 7777 --reward-every 10 --episode-steps 100

It answers each step with reward 1 every `reward_every` steps, `done` at `episode_steps`, and a
made-up `speed` and `position`; `script` replaces that answer, and `stall_after` stops answering
(the connection stays open) after that many answers, as a stuck mod would.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["FakeGameApi", "default_script"]


def default_script(reward_every: int = 10, episode_steps: int = 100) -> Callable[[dict], dict]:
    def answer(req: dict) -> dict[str, Any]:
        n = int(req.get("step", 0))
        if req.get("op") == "reset":
            return {"speed": 0.0, "position": [0.0, 0.0, 0.0]}
        return {"reward": 1.0 if n % reward_every == 0 else 0.0, "done": n >= episode_steps,
                "speed": 0.5 * n, "position": [float(n), 2.0 * n, 0.0]}  # fmt: skip

    return answer


class FakeGameApi:
    """A JSON-lines server on `host` (port 0: a free one; `address` says which), one client at a time."""

    def __init__(self, script: Callable[[dict], dict] | None = None, *, stall_after: int | None = None,
                 host: str = "127.0.0.1", port: int = 0):  # fmt: skip
        self.script = script or default_script()
        self.stall_after = stall_after
        self.requests: list[dict] = []
        self.answers = 0
        self.server = socket.create_server((host, port))
        self.address = f"{host}:{self.server.getsockname()[1]}"
        self.server.settimeout(0.1)  # accept() wakes up to see close()
        self._stop = threading.Event()
        self._conn: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, name="fake-game-api", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._conn = conn
            with conn, conn.makefile("rb") as f:
                for line in f:
                    if self._stop.is_set():
                        return
                    try:
                        req = json.loads(line)
                    except ValueError:
                        continue
                    self.requests.append(req)
                    if self.stall_after is not None and self.answers >= self.stall_after:
                        continue  # a stuck mod: reads, never answers
                    conn.sendall((json.dumps(self.script(req)) + "\n").encode())
                    self.answers += 1

    def close(self) -> None:
        self._stop.set()
        self.server.close()
        if self._conn is not None:
            try:
                self._conn.shutdown(socket.SHUT_RDWR)  # wakes the reader
            except OSError:
                pass
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeGameApi:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7777)
    p.add_argument("--reward-every", type=int, default=10)
    p.add_argument("--episode-steps", type=int, default=100)
    a = p.parse_args()
    server = FakeGameApi(default_script(a.reward_every, a.episode_steps), host=a.host, port=a.port)
    print(
        f"fake game API on {server.address} (env.game_api_address={server.address}); Ctrl+C stops it",
        flush=True,
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.close()


if __name__ == "__main__":
    main()
