"""`rayapp play`: the trained policy drives the game live, picking up newer weights while it plays.

    rayapp play --checkpoint runs/quickstart                        # the emulator, in a window
    rayapp play --config configs/arcade-screen.yaml --checkpoint runs/quickstart --env screen
    rayapp play --checkpoint s3://runs/breakout --set play.fps=0   # as fast as it can

The loop: capture -> preprocess -> inference -> input, at the env's fixed rate (`play.fps`, or the
env's own) or unthrottled (`play.fps: 0`). A console line shows FPS (captures/s), PPS
(predictions/s), a frame's capture -> its action sent (p50/p99), the raw network outputs and the
inputs they became (dead zones included), and the checkpoint's age. Newer weights at the checkpoint
location (rayapp.play.reload) are swapped in between two steps. The kill switch
(`play.kill_switch`, read globally: rayapp.play.killswitch) releases every input and pauses; again
resumes. Ctrl+C, SIGTERM/SIGHUP, closing the window, an exception anywhere in the loop, and the
process ending all release every input. `<run.dir>/play/summary.json` and `events.jsonl` (reloads,
pauses, failures, with the step they happened at) say what happened.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from rayapp.config import Config, config_to_dict
from rayapp.errors import InputDeviceError, RayappError
from rayapp.models.agent import Agent
from rayapp.models.checkpoint import PolicyCheckpoint, load_policy, resolve_checkpoint
from rayapp.play.env import check_fits, make_play_env
from rayapp.play.killswitch import KillSwitch
from rayapp.play.recorder import PlayRecorder
from rayapp.play.reload import CheckpointWatcher, checkpoint_age_s
from rayapp.play.stats import ConsoleLine, LoopStats, format_outputs
from rayapp.play.video import VideoClip
from rayapp.signals import StopSignals
from rayapp.storage import resolve, write_bytes_atomic

__all__ = ["Player", "play"]


class Player:
    """Build with the config and `--checkpoint`; `run()` plays until a budget or a stop. `devices`
    (sink=, device_factory=) replace the input senders (tests); `kill_state` the kill switch's key reader."""

    def __init__(self, cfg: Config, checkpoint: str, *, say=None, kill_state: Any = None, **devices: Any):
        self.cfg, self.p = cfg, cfg.play
        self.console = ConsoleLine(self.p.console_every_s)
        self.say = say or self.console.say
        self.source = checkpoint
        self.ckpt = load_policy(resolve_checkpoint(checkpoint))
        self.events: list[dict[str, Any]] = []
        self.env = self.watcher = self.kill = self.recorder = None
        try:
            self.env = make_play_env(cfg, self.ckpt, **devices)
            check_fits(self.ckpt, self.env, cfg)
            self.agent = self._agent(self.ckpt)
            if self.p.kill_switch:
                keys = (
                    tuple(k.name for i in range(len(m)) for k in m.keys(i))
                    if (m := self._key_mapping())
                    else ()
                )
                try:
                    self.kill = KillSwitch(self.p.kill_switch, cfg.env.display or None, kill_state, keys)
                except InputDeviceError as e:
                    if cfg.env.backend == "screen":
                        raise
                    # the emulator presses nothing: playing on without the pause key is safe, and said
                    self.say(f"play: no kill switch ({e}); Ctrl+C stops")
            if self.p.record:
                self.recorder = PlayRecorder(cfg, self.p.record, self.env.controls, self.env.raw_shape, self.ckpt.path,
                                             getattr(self.env.inputs, "kind", "emulator"), self.say)  # fmt: skip
            if self.p.reload_poll_s > 0:
                self.watcher = CheckpointWatcher(checkpoint, self.p.follow, self.p.reload_poll_s, self.ckpt.path,
                                                 self._checked_agent, self.say)  # fmt: skip
        except BaseException:
            self.close()
            raise
        self.video = VideoClip(self.p.video, self.p.video_steps, 15) if self.p.video else None
        self.stats = LoopStats()
        self._stop = StopSignals(install=False)
        self.paused = False
        self.reloaded_at: list[int] = []

    # ---- building agents ----------------------------------------------------------------------
    def _agent(self, ckpt: PolicyCheckpoint) -> Agent:
        return Agent(
            ckpt, self.p.mode, self.p.epsilon, seed=self.cfg.run.seed, q_epsilon=self.cfg.eval.q_epsilon
        )

    def _checked_agent(self, ckpt: PolicyCheckpoint) -> Agent:
        """The watcher's builder: a checkpoint that does not fit is refused, the old one plays on."""
        check_fits(ckpt, self.env, self.cfg, "the new checkpoint")
        return self._agent(ckpt)

    def _key_mapping(self):
        inputs = getattr(self.env, "inputs", None)
        return getattr(inputs, "mapping", None) if getattr(inputs, "kind", "") == "keyboard" else None

    # ---- the loop -------------------------------------------------------------------------------
    def event(self, kind: str, **info: Any) -> None:
        self.events.append({"event": kind, "step": self.stats.steps, "time": time.time(), **info})

    def stop(self, reason: str = "stop()") -> None:
        """End the loop at the next step (from another thread: a trainer done, a supervisor)."""
        self._stop.reason = self._stop.reason or reason

    def run(self) -> dict[str, Any]:
        stop, stopped_by, scores = self._stop, "", []
        stop.install()
        # The watcher loads new weights in a thread; with Python's default 5 ms switch interval the
        # loop waits up to that long for the GIL at every wake-up while it does (measured: frames
        # dropped at 60 fps around each reload). 0.5 ms hands it back within a frame's budget.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, 0.0005))
        self.event("start", checkpoint=self.ckpt.path)
        self.say(f"play: {self.ckpt.path} on {self.cfg.env.backend} {self.cfg.env.game}; "
                 f"kill switch {self.p.kill_switch if self.kill else 'off'}; Ctrl+C stops")  # fmt: skip
        try:
            while not stopped_by:
                score, stopped_by = self._episode(stop)
                scores.append(score)
                if self.p.episodes and len(scores) >= self.p.episodes:
                    stopped_by = stopped_by or "play.episodes"
        except KeyboardInterrupt:
            stopped_by = "Ctrl+C"
        except BaseException as e:  # released in `finally`; what happened is still written, then it goes up
            self.event("error", error=f"{type(e).__name__}: {e}")
            self._finish(f"error: {type(e).__name__}", scores)
            raise
        finally:
            if self.env is not None:
                self.env.release()
            stop.restore()
            sys.setswitchinterval(switch)
        return self._finish(stopped_by, scores)

    def _episode(self, stop: StopSignals) -> tuple[float, str]:
        env, st, rec = self.env, self.stats, self.recorder
        obs, info = env.reset()
        self.agent.reset()
        if rec:
            rec.begin()
        score, done, prev_capture, prev_dropped = 0.0, False, env.captured_at, 0
        while not done:
            if stop.reason or (self.p.steps and st.steps >= self.p.steps):
                break
            self._maybe_reload()
            if self.kill is not None and self.kill.pressed():
                self._pause(stop)
                if stop.reason:
                    break
            t0 = time.perf_counter()
            frame = env.raw_frame
            action = self.agent.act(obs)
            t_pred = time.perf_counter()
            st.prediction(t_pred)
            obs, r, te, tr, info = env.step(action)
            st.capture(env.captured_at)
            dropped = int(info.get("dropped_frames", 0)) - prev_dropped  # boundaries this step missed
            st.step((env.sent_at - prev_capture) * 1000 if prev_capture else None,
                    (time.perf_counter() - t0) * 1000, float(info.get("late_ms", 0.0)), dropped)  # fmt: skip
            prev_capture, prev_dropped = env.captured_at, prev_dropped + dropped
            score += float(r)
            done = bool(te or tr)
            # a stop or the step budget ends the episode here: its last row says truncated
            cut = not done and bool(stop.reason or (self.p.steps and st.steps >= self.p.steps))
            if rec:
                rec.step(frame, action, r, te, (tr or cut) and not te, score=score, frame=int(info.get("frame_index", 0)),
                         time=time.time(), dropped=dropped, late_ms=float(info.get("late_ms", 0.0)))  # fmt: skip
            if self.video is not None:
                self.video.add(env.raw_frame, f"score {score:g} step {st.steps}")
            if cut:
                break
            if self.console.due():
                self.console.show(st.line(format_outputs(self.agent.last_outputs), env.describe_inputs(action),
                                          self._age(), f" | score {score:g}"))  # fmt: skip
        if rec:
            rec.end()
        self.event("episode", score=score)
        return score, stop.reason or ("play.steps" if self.p.steps and st.steps >= self.p.steps else "")

    def _age(self) -> float | None:
        """Seconds since the playing checkpoint was written (its file time, read once per checkpoint)."""
        if getattr(self, "_written_for", None) is not self.agent.ckpt:
            self._written_for = self.agent.ckpt
            age = checkpoint_age_s(self.agent.ckpt)
            self._written = None if age is None else time.time() - age
        return None if self._written is None else time.time() - self._written

    def _maybe_reload(self) -> None:
        ready = self.watcher.take() if self.watcher is not None else None
        if ready is None:
            return
        self.agent = ready.agent
        self.ckpt = ready.checkpoint
        self.reloaded_at.append(self.stats.steps)
        self.event("reload", checkpoint=ready.uri, load_s=round(ready.seconds, 3))
        self.say(
            f"play: new weights at step {self.stats.steps:,}: {ready.uri} (loaded in {ready.seconds:.2f} s)"
        )

    def _pause(self, stop: StopSignals) -> None:
        """The kill switch: everything released, nothing sent until the key comes again."""
        self.env.release()
        self.paused = True
        self.event("pause")
        self.say(
            f"play: PAUSED by the kill switch ({self.p.kill_switch}); every input released; press it again to resume"
        )
        try:
            while not self.kill.pressed() and not stop.reason:
                time.sleep(0.02)
        finally:
            self.paused = False
        self.env.clock.resync()  # the time paused is no dropped frames
        self.event("resume")
        self.say("play: resumed")

    # ---- the end ---------------------------------------------------------------------------------
    def _finish(self, stopped_by: str, scores: list[float]) -> dict[str, Any]:
        self.event("stop", reason=stopped_by)
        out = {"checkpoint": self.ckpt.path, "stopped_by": stopped_by, "episodes": len(scores), "scores": scores,
               **self.stats.summary(), "reloads": self.reloaded_at,
               "reload_failures": list(self.watcher.failures) if self.watcher else []}  # fmt: skip
        self.close()
        if self.recorder is not None:
            out["record"] = self.recorder_summary
        if self.video is not None:
            out["video"] = self.video.write()
        folder = resolve(self.cfg.run.dir).join("play")
        write_bytes_atomic(
            folder.join("summary.json"), (json.dumps(out, indent=1, default=float) + "\n").encode()
        )
        write_bytes_atomic(
            folder.join("events.jsonl"), "".join(json.dumps(e) + "\n" for e in self.events).encode()
        )
        write_bytes_atomic(
            folder.join("config.json"), json.dumps(config_to_dict(self.cfg), indent=1).encode()
        )
        self.say(f"play: {out['steps']:,} steps, {len(scores)} episodes, stopped by {stopped_by or 'the end'}; "
                 f"latency p50 {out['latency_p50_ms']:.1f} p99 {out['latency_p99_ms']:.1f} ms; "
                 f"{out['dropped_frames']} dropped frames; {len(self.reloaded_at)} reloads")  # fmt: skip
        return out

    def close(self) -> None:
        """Release and close everything, each even if another fails."""
        for name in ("watcher", "kill", "env"):
            thing = getattr(self, name, None)
            if thing is not None:
                try:
                    thing.close()
                except Exception as e:  # noqa: BLE001
                    self.say(f"play: closing the {name} failed: {e}")
                setattr(self, name, None)
        if self.recorder is not None and not hasattr(self, "recorder_summary"):
            self.recorder_summary = self.recorder.close()


def play(cfg: Config, checkpoint: str) -> dict[str, Any]:
    """`rayapp play`: build the player, run it, print the summary's line."""
    if (
        not os.environ.get("DISPLAY")
        and cfg.env.backend == "screen"
        and not cfg.env.display
        and os.name != "nt"
    ):
        raise RayappError("rayapp play --env screen needs an X display: set DISPLAY or env.display")
    player = Player(cfg, checkpoint)
    return player.run()
