"""`rayapp record` with `record.source=screen`: a person plays the game on the screen and is recorded.

One screen is one env, so this runs in the driver process, without Ray. At every frame boundary
(`env.fps`, rayapp.envs.screen.FrameClock) the recorder reads the person's held inputs (keyboard
or gamepad state; rayapp.envs.inputs.listen: nothing is ever sent or pressed), then captures the
frame. Row k of the dataset is the frame of boundary k, the action those inputs play under the
configured mapping (inputs.keys: `rayapp arcade`'s rule, the most keys win), and the reward and
episode end the reward source (`env.reward`) reads from the frame of boundary k + 1; so it is the
Atari recorder's contract (rayapp.replay), in the model's own action space. Extras: the score,
lives (when the source reads them), the boundary's number (`frame`), unix `time`, `dropped`
(boundaries missed just before the row: the machine could not keep up), `late_ms`, and
`reward_info`: the reward source's other extras as JSON text (a game mod's speed and position,
screen_score's `reward_error`).

Episodes end where the reward source says, at `env.max_episode_steps` or `env.time_limit_s`
(truncated), or when the
recording stops: `record.episodes` / `record.steps` reached, Ctrl+C, SIGTERM or SIGHUP (the last
row is then truncated). Shards are the same `ReplayWriter` shards: a recorder killed at any point
loses at most the shard in progress.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from rayapp.config import Config, config_to_dict
from rayapp.envs.atari import game_name
from rayapp.envs.inputs.listen import make_input_reader
from rayapp.envs.screen.capture import ScreenCapture
from rayapp.envs.screen.clock import FrameClock
from rayapp.envs.screen.env import step_rate
from rayapp.envs.screen.rewards import make_reward_source
from rayapp.progress import Progress
from rayapp.replay.dataset import create_dataset, write_session
from rayapp.replay.schema import ActionControl, DatasetInfo, ObservationSpec, choose_encoding
from rayapp.replay.writer import ReplayWriter
from rayapp.runs import save_resolved_config
from rayapp.signals import StopSignals
from rayapp.storage import resolve

__all__ = ["SCREEN_EXTRAS", "ScreenRecordSummary", "record_screen", "screen_dataset_info"]

SCREEN_EXTRAS = ("score", "lives", "frame", "time", "dropped", "late_ms", "reward_info")
# the reward source's extras that have their own column (or none: they are the step's own outputs)
_OWN_COLUMNS = ("score", "lives")
# A row group is handed to the writer's thread from inside the frame loop, and building it costs the
# loop time in proportion to its size: measured here, 0.8 s at record.row_group_mb=64 (665 raw
# 210x160 frames: 22 dropped frames at 30 fps), under 9 ms at 4 MB. So the screen recorder caps it.
SCREEN_ROW_GROUP_MB = 4.0


@dataclass
class ScreenRecordSummary:
    uri: str
    session: str
    episodes: list[dict[str, Any]] = field(default_factory=list)  # published ones
    shards: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0  # recorded (published or not)
    dropped: int = 0
    seconds: float = 0.0
    stopped_by: str = ""

    def line(self) -> str:
        size = sum(s["bytes"] for s in self.shards)
        scores = [e["score"] for e in self.episodes]
        score = f"; score mean {sum(scores) / len(scores):.1f}" if scores else ""
        return (
            f"recorded {len(self.episodes)} episodes, {self.steps:,} steps from the screen in {self.seconds:.1f} s "
            f"({self.dropped} dropped frames) into {self.uri}: {len(self.shards)} new shards, {size / 2**20:.2f} MiB"
            f"{score}; stopped by {self.stopped_by}"
        )


def _controls(reader) -> tuple[ActionControl, ...]:
    m = reader.mapping
    if reader.kind == "mouse":
        return (ActionControl("command", len(m.commands), tuple(c.name for c in m.commands)),
                ActionControl("x", m.cols), ActionControl("y", m.rows))  # fmt: skip
    if getattr(m, "discrete", True):
        return (ActionControl("action", len(m.names), tuple(m.names)),)
    return tuple(ActionControl(h, len(c)) for h, c in m.heads.items())


def screen_dataset_info(cfg: Config, reader, shape: tuple[int, ...], session: str) -> DatasetInfo:
    r = cfg.record
    return DatasetInfo(
        game=game_name(cfg.env.game),
        env_id=f"screen:{game_name(cfg.env.game)}",
        observation=ObservationSpec(
            tuple(shape), "uint8", choose_encoding(tuple(shape), r.encoding), r.jpeg_quality
        ),
        actions=_controls(reader),
        frame_rate=step_rate(cfg.env),
        extras=SCREEN_EXTRAS,
        recorded_by={
            "policy": "human",
            "input": reader.kind,
            "epsilon": 0.0,
            "session": session,
            "reward": cfg.env.reward,
        },  # fmt: skip
    )


def record_screen(cfg: Config, show_progress: bool = True) -> ScreenRecordSummary:
    """Record the person at the screen into `data.uri` until the budget is met or they stop it."""
    r, e = cfg.record, cfg.env
    session = time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(2)
    loc = resolve(cfg.data_uri)
    reward = make_reward_source(e)  # config errors first
    reader = capture = writer = None
    try:
        where = lambda: capture.rect.as_tuple()  # noqa: E731 - the mouse grid covers the capture, wherever it is
        # unknown key names fail first, then no display, then no such window; before any data is touched
        reader = make_input_reader(cfg.inputs, e.display or None, region=where)
        capture = ScreenCapture(e)
        info = create_dataset(loc, screen_dataset_info(cfg, reader, capture.frame_shape, session), r.append)
        save_resolved_config(cfg, "record")
        writer = ReplayWriter(
            loc, info, f"{session}-h0", shard_mb=r.shard_mb, shard_steps=r.shard_steps, max_shard_mb=r.max_shard_mb,
            row_group_rows=r.row_group_rows, row_group_mb=min(r.row_group_mb, SCREEN_ROW_GROUP_MB), compression_level=r.compression_level,
        )  # fmt: skip
        pa.array(
            [b""], type=pa.binary()
        )  # pyarrow imports pandas at its first array (0.3 s): not in the frame loop
        summary = ScreenRecordSummary(loc.uri, session)
        _Loop(cfg, reader, capture, reward, writer, summary, show_progress).run()
        return summary
    finally:
        for thing in (reader, capture, reward):
            if thing is not None:
                thing.close()


class _Loop:
    def __init__(self, cfg, reader, capture, reward, writer, summary, show_progress):
        self.cfg, self.reader, self.capture, self.reward, self.writer = cfg, reader, capture, reward, writer
        self.summary = summary
        self.clock = FrameClock(step_rate(cfg.env))
        self.finished: dict[str, dict[str, Any]] = {}  # ended episodes waiting for their shard
        self.bar = (
            Progress(cfg.record.steps or None, "record", unit="frames", log_every=10)
            if show_progress
            else None
        )
        self.score = 0.0

    def want_more(self, stop: StopSignals) -> bool:
        r = self.cfg.record
        if stop.reason:
            return False
        if r.steps and self.summary.steps >= r.steps:
            return False
        ended = len(self.summary.episodes) + len(self.finished)
        return not (r.episodes and ended >= r.episodes)

    def run(self) -> None:
        s, stop = self.summary, StopSignals(names={})
        t0 = time.perf_counter()
        try:
            while self.want_more(stop):
                self.episode(stop)
            s.stopped_by = stop.reason or ("record.steps" if self.cfg.record.steps and s.steps >= self.cfg.record.steps
                                           else "record.episodes")  # fmt: skip
        finally:
            stop.restore()
            s.seconds = time.perf_counter() - t0
            self.published(self.writer.close())
            if self.bar:
                self.bar.close()
            if s.episodes:
                write_session(self.writer.loc, s.session, {
                    "session": s.session, "policy": "human", "source": "screen", "seconds": s.seconds,
                    "steps": s.steps, "dropped": s.dropped, "episodes": s.episodes, "shards": s.shards,
                    "stopped_by": s.stopped_by, "config": config_to_dict(self.cfg),
                })  # fmt: skip

    def episode(self, stop: StopSignals) -> None:
        cap, clock, w, cfg = self.capture, self.clock, self.writer, self.cfg
        eid = w.begin_episode()
        cap.locate()
        clock.start()
        action, t = self.reader.read(), time.time()
        frame = cap.grab()
        self.reward.reset(frame)
        index, late, dropped, steps, self.score, ep_dropped = 0, 0.0, 0, 0, 0.0, 0
        started, limit = time.monotonic(), cfg.env.time_limit_s
        while True:
            tick = clock.wait()
            next_action = self.reader.read()  # the inputs held at the boundary, then its frame
            next_t = time.time()
            next_frame = cap.grab()
            reading = self.reward.step(next_frame)
            self.score = float(reading.info.get("score", self.score + reading.reward))
            steps += 1
            self.summary.steps += 1
            r = cfg.record
            truncated = (steps >= cfg.env.max_episode_steps or bool(stop.reason)
                         or bool(r.steps and self.summary.steps >= r.steps)
                         or bool(limit and time.monotonic() - started >= limit))  # fmt: skip
            extra = {k: v for k, v in reading.info.items() if k not in _OWN_COLUMNS}
            w.add_step(frame, action, reading.reward, reading.terminated, truncated and not reading.terminated,
                       score=self.score, lives=reading.info.get("lives"), frame=index, time=t, dropped=dropped,
                       late_ms=late, reward_info=extra or None)  # fmt: skip
            if self.bar:
                self.bar.update(1, episodes=len(self.summary.episodes) + len(self.finished),
                                dropped=self.summary.dropped + tick.dropped, score=f"{self.score:g}")  # fmt: skip
            self.summary.dropped += tick.dropped
            ep_dropped += tick.dropped
            if reading.terminated or truncated:
                break
            frame, action, t = next_frame, next_action, next_t
            index, late, dropped = tick.index, tick.late_ms, tick.dropped
        self.finished[eid] = {"episode_id": eid, "score": self.score, "steps": steps,
                              "terminated": bool(reading.terminated), "dropped": ep_dropped}  # fmt: skip
        shards_before = len(w.shards)
        w.end_episode()
        self.published(w.shards[shards_before:])

    def published(self, shards) -> None:
        known = {x["uri"] for x in self.summary.shards}
        for shard in shards:
            d = asdict(shard)
            if d["uri"] in known:
                continue
            self.summary.shards.append(d)
            for eid in d["ended"]:
                if eid in self.finished:
                    self.summary.episodes.append(self.finished.pop(eid))
