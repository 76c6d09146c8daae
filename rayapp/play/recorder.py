"""`rayapp play --record URI`: what the agent plays, in the replay contract (for DQN's online data or
for review), written from a thread of its own so that storage never stalls the live loop.

Row k is the frame the agent saw, the action it chose, and the reward and episode end of the step
that followed, as every recorder writes them. `dataset.json` says the player recorded it
(`recorded_by.policy: checkpoint`, the checkpoint, the input backend). The shards are
`ReplayWriter`'s: published whole, so when storage becomes unreachable, what was published stays
readable, the loop plays on, and the recorder reports once what it could not write.
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from rayapp.config import Config
from rayapp.envs.atari import game_name
from rayapp.play.env import play_rate
from rayapp.replay.dataset import create_dataset, write_session
from rayapp.replay.schema import ActionControl, DatasetInfo, ObservationSpec, choose_encoding
from rayapp.replay.writer import ReplayWriter
from rayapp.storage import resolve

__all__ = ["PlayRecorder", "PLAY_EXTRAS"]

PLAY_EXTRAS = ("score", "frame", "time", "dropped", "late_ms")
_CLOSE = object()


def play_dataset_info(cfg: Config, controls: tuple[ActionControl, ...], shape: tuple[int, ...],
                      checkpoint: str, session: str, input_kind: str) -> DatasetInfo:  # fmt: skip
    r = cfg.record
    screen = cfg.env.backend == "screen"
    return DatasetInfo(
        game=game_name(cfg.env.game),
        env_id=f"screen:{game_name(cfg.env.game)}" if screen else f"ALE/{game_name(cfg.env.game)}-v5",
        observation=ObservationSpec(
            tuple(shape), "uint8", choose_encoding(tuple(shape), r.encoding), r.jpeg_quality
        ),
        actions=controls,
        frame_rate=play_rate(cfg) or 60.0 / cfg.env.frameskip,
        extras=PLAY_EXTRAS,
        recorded_by={
            "policy": "checkpoint",
            "checkpoint": checkpoint,
            "input": input_kind,
            "epsilon": cfg.play.epsilon,
            "mode": cfg.play.mode,
            "session": session,
            "player": "rayapp play",
        },  # fmt: skip
    )


class PlayRecorder:
    """`begin()`, `step(...)` and `end()` queue work for the writer thread; `close()` publishes."""

    def __init__(self, cfg: Config, uri: str, controls, shape, checkpoint: str, input_kind: str,
                 say: Callable[[str], None] = print, max_queue: int = 4096):  # fmt: skip
        self.uri, self.say = resolve(uri).uri, say
        self.session = "play-" + time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(2)
        self.loc = resolve(uri)
        info = play_dataset_info(cfg, tuple(controls), shape, checkpoint, self.session, input_kind)
        info = create_dataset(
            self.loc, info, append=True
        )  # unreachable or incompatible: fails now, before play
        r = cfg.record
        self.writer = ReplayWriter(self.loc, info, self.session, shard_mb=r.shard_mb, shard_steps=r.shard_steps,
                                   max_shard_mb=r.max_shard_mb, row_group_rows=r.row_group_rows,
                                   row_group_mb=min(r.row_group_mb, 4.0), compression_level=r.compression_level)  # fmt: skip
        self.error: str | None = None
        self.queued = self.lost = self.episodes = 0
        self._q: queue.Queue = queue.Queue(max_queue)
        self._thread = threading.Thread(target=self._run, name="play-recorder", daemon=True)
        self._thread.start()

    # ---- the loop's side (never blocks) -----------------------------------------------------
    def _put(self, item: tuple) -> None:
        if self.error is not None:
            self.lost += item[0] == "step"
            return
        try:
            self._q.put_nowait(item)
            self.queued += item[0] == "step"
        except queue.Full:  # storage slower than the game: the step is lost, the loop goes on
            self.lost += item[0] == "step"

    def begin(self) -> None:
        self._put(("begin",))

    def step(self, obs, action, reward: float, terminated: bool, truncated: bool, **extras: Any) -> None:
        self._put(("step", obs, action, reward, terminated, truncated, extras))

    def end(self) -> None:
        self._put(("end",))

    # ---- the writer thread --------------------------------------------------------------------
    def _run(self) -> None:
        w = self.writer
        while True:
            item = self._q.get()
            if item is _CLOSE:
                return
            if self.error is not None:
                self.lost += item[0] == "step"
                continue
            try:
                if item[0] == "begin":
                    w.begin_episode()
                elif item[0] == "step":
                    w.add_step(item[1], item[2], item[3], item[4], item[5], **item[6])
                else:
                    w.end_episode()
                    self.episodes += 1
            except Exception as e:  # noqa: BLE001 - any failure stops recording, never the player
                self.lost += item[0] == "step"
                self.error = f"{type(e).__name__}: {e}"
                self.say(f"recording to {self.uri} stopped: {self.error}; playing on without recording; "
                         f"the {len(w.shards)} shards written before stay readable")  # fmt: skip

    def close(self) -> dict[str, Any]:
        """Publish the shard in progress (when storage is still there) and say what was kept."""
        self._q.put(_CLOSE)
        self._thread.join()
        shards = []
        if self.error is None:
            try:
                shards = self.writer.close()
            except Exception as e:  # noqa: BLE001
                self.error = f"{type(e).__name__}: {e}"
                self.say(f"recording to {self.uri}: the last shard could not be written: {self.error}")
        if self.error is not None:
            self.writer.abort()
            shards = self.writer.shards
        written = sum(s.rows for s in shards)
        summary = {"uri": self.uri, "session": self.session, "steps_written": written, "shards": len(shards),
                   "steps_lost": self.queued + self.lost - written, "error": self.error}  # fmt: skip
        if shards:
            try:
                write_session(self.loc, self.session, {**summary, "policy": "checkpoint", "source": "play"})
            except Exception as e:  # noqa: BLE001 - the shards are what matters
                self.say(f"recording to {self.uri}: sessions/{self.session}.json not written: {e}")
        return summary
