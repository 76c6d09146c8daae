"""The live player's loop (`rayapp play`) on the arcade window: how fast, how punctual, and whether a
hot reload stalls it. On a private Xvfb with `rayapp arcade` playing Breakout, the player drives it
through ScreenEnv (configs/arcade-screen.yaml: capture of the window, the Atari path's 84x84x4
preprocessing, the XTEST keyboard) with the default CNN (untrained weights: speed does not depend
on them). Same run, same window:

1. capture: ScreenEnv's capture + preprocessing alone (`capture_fps`, what every step has to do)
   and a bare mss grab of the same region (`bare_grab_fps`), rounds alternated;
2. unthrottled (`play.fps: 0`): predictions per second (`pps`; goal >= 120), `pps / capture_fps`,
   and a frame's capture to its keys being sent, p50 / p99;
3. `play.fps: 60`: lateness against the frame boundary (p99) and dropped frames over the steps
   (goal: none in 1,000 steps);
4. hot reload at 60 fps: new weights written to the watched run folder every second; the worst
   lateness in the steps around each swap (while the weights load in the background, and the
   swap itself) against the p99 lateness of the same run and the frame period, and the frames
   dropped there (goal: a reload never stalls the loop for a frame period).

    python benchmarks/live_loop.py            # 3,000 unthrottled steps, 1,000 at 60 fps, 1,200 with reloads
    python benchmarks/live_loop.py --quick    # under a minute: 400 / 300 / 300

Uses --display when given, else starts its own Xvfb and arcade. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from screen import capture_rates, start_arcade, start_xvfb  # noqa: E402

from rayapp.config import load_config  # noqa: E402
from rayapp.frames import FrameSpec  # noqa: E402
from rayapp.models.checkpoint import save_policy, write_best  # noqa: E402
from rayapp.models.nets import ModelSpec, build_model  # noqa: E402
from rayapp.play.player import Player  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "arcade-screen.yaml")
LABELS = ["NOOP", "FIRE", "RIGHT", "LEFT"]


def policy(folder: str, seed: int) -> str:
    """The default CNN on 84x84x4 for Breakout's 4 actions, as `rayapp pretrain` would save it."""
    import torch

    torch.manual_seed(seed)
    frames = FrameSpec()
    spec = ModelSpec((frames.frame_stack, 84, 84), (("action", 4),))
    game = {"game": "Breakout", "env_id": "ALE/Breakout-v5", "actions": [LABELS], "frame_rate": 15.0}
    return save_policy(folder, build_model(spec), spec, frames, game, {}, {"stage": "pretrain"}, replace=True)


def play(run: str, tmp: str, steps: int, fps: float, poll_s: float = 0.0) -> Player:
    cfg = load_config(CONFIG, [f"run.dir={tmp}", f"play.steps={steps}", f"play.fps={fps}", "play.kill_switch=f12",
                               f"play.reload_poll_s={poll_s}", "play.console_every_s=1000"])  # fmt: skip
    p = Player(cfg, run, say=lambda s: None)
    p.summary = p.run()
    return p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--display", help="an X display with nothing else on it (default: a private Xvfb)")
    a = ap.parse_args()
    n_free, n_60, n_reload, grabs = (400, 300, 300, 300) if a.quick else (3000, 1000, 1200, 1500)
    xvfb = None
    if a.display:
        display = a.display
    else:
        xvfb, display = start_xvfb()
    os.environ["DISPLAY"] = display
    arcade = start_arcade(display)
    out: dict = {"benchmark": "live_loop", "quick": a.quick, "machine": f"{os.cpu_count()} cpus {platform.machine()}"}
    try:
        tmp = tempfile.mkdtemp(prefix="live-loop-")
        run = os.path.join(tmp, "trainer")
        write_best(run, "pretrain", policy(os.path.join(tmp, "p0"), 0), {})
        rates = capture_rates(load_config(CONFIG), grabs, 3)  # benchmarks/screen.py part 1
        out.update(capture_fps=rates["capture_fps"], bare_grab_fps=rates["bare_fps"])

        free = play(run, os.path.join(tmp, "free"), n_free, 0).summary
        out.update(pps=free["steps_per_s"], pps_over_capture_fps=round(free["steps_per_s"] / out["capture_fps"], 3),
                   p50_ms=free["latency_p50_ms"], p99_ms=free["latency_p99_ms"], pps_goal=120)  # fmt: skip

        at60 = play(run, os.path.join(tmp, "at60"), n_60, 60).summary
        out["fps60"] = {"steps": at60["steps"], "late_p99_ms": at60["late_p99_ms"], "dropped_frames": at60["dropped_frames"],
                        "steps_per_s": at60["steps_per_s"], "latency_p99_ms": at60["latency_p99_ms"]}  # fmt: skip

        stop = threading.Event()

        def trainer() -> None:  # a newer policy every second, as a trainer exporting would
            k = 1
            while not stop.wait(1.0):
                write_best(run, "pretrain", policy(os.path.join(tmp, f"p{k}"), k), {})
                k += 1

        t = threading.Thread(target=trainer, daemon=True)
        t.start()
        p = play(run, os.path.join(tmp, "reload"), n_reload, 60, poll_s=0.25)
        stop.set()
        t.join()
        late = np.asarray(p.stats.late_ms)
        around = [i for k in p.reloaded_at for i in range(max(0, k - 8), min(len(late), k + 2))]
        dropped_near = [s for s in p.stats.dropped_at if any(k - 8 <= s <= k + 2 for k in p.reloaded_at)]
        out["reload"] = {"reloads": len(p.reloaded_at), "max_late_ms_around_reloads": round(float(late[around].max()), 3) if around else None,
                         "late_p99_ms": p.summary["late_p99_ms"], "period_ms": round(1000 / 60, 3),
                         "dropped_frames_around_reloads": len(dropped_near), "dropped_frames": p.summary["dropped_frames"],
                         "load_s": [round(e["load_s"], 3) for e in p.events if e["event"] == "reload"][:10]}  # fmt: skip
    finally:
        arcade.terminate()
        arcade.wait(timeout=30)
        if xvfb is not None:
            xvfb.terminate()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
