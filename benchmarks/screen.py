"""The screen path's speed, on a private Xvfb with `rayapp arcade` playing Breakout in its window.

1. Capture -> preprocess rate: ScreenEnv's capture of the arcade window (mss grab, area resize
   to env.frame_size 210x160, BGRA -> RGB) and the Atari path's FrameStacker (gray, 84x84, stack
   of 4), against a bare mss grab of the same region (`np.asarray(sct.grab(region))`), alternated
   in rounds in the same run. Goal: ratio >= 0.8. Beside them, the grab plus one cvtColor
   BGRA -> gray of it (`one_pass_ratio`): the cheapest vectorised pass over the frame, so a ceiling
   on the ratio any preprocessing that reads the frame once, in the same thread, can reach.
2. Fixed-rate stepping: ScreenEnv stepping the arcade window at 30 and 60 fps (NOOP, the keyboard
   backend through XTEST), late_ms p50 / p99 / max and dropped frames. Goals: p99 <= 2 ms at 60
   fps, no dropped frame at 30 fps.
3. Recording a person (`rayapp record --source screen`, in this process): 3,000 steps at 30 fps of
   the arcade window while a thread changes the held keys (XTEST) every 0.2 s; dropped frames,
   late_ms p99 from the dataset's extras, bytes per frame. Goal: no dropped frame.
4. A BC policy plays (benchmarks/screen_bcplay.py; with --bc-run RUN_FOLDER_OR_CHECKPOINT; its softmax,
   or --bc-mode greedy): N
   episodes on the emulator (rayapp's evaluation path, the arcade's settings: sticky actions 0)
   and N through ScreenEnv against the arcade window in real time (configs/arcade-screen.yaml,
   15 fps, XTEST keyboard; score and episode end from the arcade's game API, `--game-api`), and a
   random policy on the emulator. Mean score +- standard error, late_ms, dropped frames, the
   ratio screen / emulator. Goal: ratio >= 0.5 and the screen mean above random. Without
   --bc-run the part is skipped (the JSON says so).

    python benchmarks/screen.py           # 5 rounds of 2,000 grabs; 1,000 steps at each rate; 3,000 recorded
    python benchmarks/screen.py --quick   # about a minute: 3 rounds of 500 grabs; 1,000 steps at 60, 500 at 30; 600 recorded
    python benchmarks/screen.py --part bcplay --bc-run runs/quickstart   # part 4 only: 10 episodes per path, <= 1,000 steps each
    python benchmarks/screen.py --quick --bc-run runs/smoke              # part 4 at 2 episodes of <= 150 steps

Uses $DISPLAY when --display is given, else starts its own Xvfb. The last line printed is one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import cv2
import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from rayapp.config import load_config  # noqa: E402
from rayapp.envs.screen import ScreenEnv, WindowFinder  # noqa: E402
from rayapp.envs.screen.capture import open_mss  # noqa: E402
from rayapp.errors import CaptureError  # noqa: E402
from rayapp.frames import FrameSpec, FrameStacker  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "arcade-screen.yaml")
TITLE = "rayapp arcade: Breakout"


def start_xvfb() -> tuple[subprocess.Popen, str]:
    exe = shutil.which("Xvfb")
    if exe is None:
        sys.exit("benchmarks/screen.py: Xvfb is not installed (apt-get install xvfb), or pass --display")
    r, w = os.pipe()
    proc = subprocess.Popen([exe, "-displayfd", str(w), "-screen", "0", "1280x720x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    os.close(w)
    with os.fdopen(r) as f:
        return proc, ":" + f.readline().strip()


def start_arcade(display: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, DISPLAY=display, PYTHONPATH=ROOT, SDL_AUDIODRIVER="dummy")
    proc = subprocess.Popen([sys.executable, "-m", "rayapp.cli", "arcade", "--game", "Breakout", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    finder = WindowFinder(display)
    deadline = time.monotonic() + 60
    while True:
        try:
            finder.find(TITLE)
            break
        except CaptureError:
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit("benchmarks/screen.py: the arcade window did not appear")
            time.sleep(0.1)
    finder.close()
    return proc


def capture_rates(cfg, grabs: int, rounds: int) -> dict:
    env = ScreenEnv(cfg.env, cfg.inputs, FrameSpec())
    stacker = FrameStacker(FrameSpec(), env.raw_shape)
    stacker.reset(env.capture.grab())
    v = env.capture.visible
    region = {"left": v.left, "top": v.top, "width": v.width, "height": v.height}
    sct = open_mss(cfg.env.display)

    def ours() -> float:
        t0 = time.perf_counter()
        for _ in range(grabs):
            stacker.push(env.capture.grab())
        return grabs / (time.perf_counter() - t0)

    def bare() -> float:
        t0 = time.perf_counter()
        for _ in range(grabs):
            np.asarray(sct.grab(region))
        return grabs / (time.perf_counter() - t0)

    def one_pass() -> float:  # the grab plus the cheapest vectorised pass over it: a ceiling, not a method
        t0 = time.perf_counter()
        for _ in range(grabs):
            cv2.cvtColor(np.asarray(sct.grab(region)), cv2.COLOR_BGRA2GRAY)
        return grabs / (time.perf_counter() - t0)

    ours(), bare(), one_pass()  # warm-up
    rows = [(ours(), bare(), one_pass()) for _ in range(rounds)]
    env.close()
    sct.close()
    cap, raw, floor = (float(np.median([r[i] for r in rows])) for i in range(3))
    return {"capture_fps": round(cap, 1), "bare_fps": round(raw, 1), "ratio": round(cap / raw, 3),
            "ratio_rounds": [round(a / b, 3) for a, b, _ in rows], "region": [v.width, v.height],
            "one_pass_fps": round(floor, 1), "one_pass_ratio": round(floor / raw, 3)}  # fmt: skip


def fixed_rate(cfg, fps: float, steps: int) -> dict:
    env = ScreenEnv(load_config(CONFIG, [f"env.fps={fps}", f"env.display={cfg.env.display}"]).env, cfg.inputs,
                    FrameSpec())  # fmt: skip
    env.reset()
    late = np.empty(steps)
    t0 = time.perf_counter()
    for i in range(steps):
        _, _, _, _, info = env.step(0)
        late[i] = info["late_ms"]
    wall = time.perf_counter() - t0
    env.close()
    return {"fps": fps, "steps": steps, "p50_late_ms": round(float(np.percentile(late, 50)), 3),
            "p99_late_ms": round(float(np.percentile(late, 99)), 3), "max_late_ms": round(float(late.max()), 3),
            "dropped_frames": int(info["dropped_frames"]), "achieved_fps": round(steps / wall, 2)}  # fmt: skip


def record_human(cfg, steps: int, fps: float = 30) -> dict:
    import tempfile
    import threading

    from rayapp.envs.inputs import KeyboardBackend
    from rayapp.record_screen import record_screen
    from rayapp.replay.reader import ReplayDataset

    tmp = tempfile.mkdtemp(prefix="rayapp-bench-human-")
    rcfg = load_config(CONFIG, [f"env.display={cfg.env.display}", f"env.fps={fps}", f"record.steps={steps}",
                                "record.source=screen", f"data.uri={tmp}/data", f"run.dir={tmp}/run"])  # fmt: skip
    done = threading.Event()

    def person() -> None:  # the keys a person would hold, changing five times a second
        with KeyboardBackend(rcfg.inputs.keys, display=cfg.env.display) as kb:
            i = 0
            while not done.wait(0.2):
                kb.apply(i % len(rcfg.inputs.keys))
                i += 1

    t = threading.Thread(target=person, daemon=True)
    t.start()
    try:
        summary = record_screen(rcfg, show_progress=False)
    finally:
        done.set()
        t.join(timeout=10)
    late = np.concatenate(
        [e.extras["late_ms"] for e in ReplayDataset(f"{tmp}/data").iter_episodes(decode=False)]
    )
    shutil.rmtree(tmp, ignore_errors=True)
    size = sum(s["bytes"] for s in summary.shards)
    return {"fps": fps, "steps": summary.steps, "dropped_frames": summary.dropped,
            "achieved_fps": round(summary.steps / summary.seconds, 2),
            "p99_late_ms": round(float(np.percentile(late[1:], 99)), 3), "max_late_ms": round(float(late.max()), 3),
            "bytes_per_frame": round(size / summary.steps, 1)}  # fmt: skip


def speed_parts(display: str, quick: bool) -> dict:
    """Parts 1-3 against one arcade."""
    grabs, rounds, steps30, steps60 = (500, 3, 500, 1000) if quick else (2000, 5, 1000, 1000)
    recorded = 600 if quick else 3000
    arcade = start_arcade(display)
    try:
        cfg = load_config(CONFIG, [f"env.display={display}"])
        cap = capture_rates(cfg, grabs, rounds)
        print(f"capture -> preprocess {cap['capture_fps']:.0f} fps, bare mss grab {cap['bare_fps']:.0f} fps "
              f"(ratio {cap['ratio']}; rounds {cap['ratio_rounds']}); grab + one gray pass {cap['one_pass_fps']:.0f} "
              f"fps (ratio {cap['one_pass_ratio']})", flush=True)  # fmt: skip
        rates = {}
        for fps, steps in ((60, steps60), (30, steps30)):
            r = rates[f"fps{fps}"] = fixed_rate(cfg, fps, steps)
            print(f"{fps} fps x {steps} steps: late p50 {r['p50_late_ms']} ms, p99 {r['p99_late_ms']} ms, "
                  f"max {r['max_late_ms']} ms, dropped {r['dropped_frames']}", flush=True)  # fmt: skip
        rec = record_human(cfg, recorded)
        print(f"recording a person at 30 fps x {rec['steps']} steps: dropped {rec['dropped_frames']}, late p99 "
              f"{rec['p99_late_ms']} ms, max {rec['max_late_ms']} ms, {rec['bytes_per_frame']} B/frame", flush=True)  # fmt: skip
    finally:
        arcade.terminate()
        arcade.wait(timeout=30)
    return {
        "result": {**{k: cap[k] for k in ("capture_fps", "bare_fps", "ratio", "one_pass_fps", "one_pass_ratio")},
                   **{f"{k}_{key}": v for k, r in rates.items() for key, v in r.items() if key != "fps"},
                   **{f"record30_{key}": v for key, v in rec.items() if key != "fps"}},
        "goals": {"ratio>=0.8": cap["ratio"] >= 0.8, "p99_late_ms@60<=2": rates["fps60"]["p99_late_ms"] <= 2,
                  "dropped@30==0": rates["fps30"]["dropped_frames"] == 0,
                  "record_dropped@30==0": rec["dropped_frames"] == 0},
    }  # fmt: skip


def bc_part(display: str, args) -> dict:
    """Part 4 (benchmarks/screen_bcplay.py)."""
    from benchmarks.screen_bcplay import bc_play

    episodes = args.bc_episodes or (2 if args.quick else 10)
    max_steps = args.bc_max_steps or (150 if args.quick else 1000)
    print(
        f"BC play ({args.bc_mode}): {episodes} episodes of <= {max_steps} steps per path, {args.bc_run}",
        flush=True,
    )
    r = bc_play(display, args.bc_run, episodes, max_steps, start_arcade, CONFIG, args.bc_mode)
    print(f"BC play: emulator {r['emulator_mean']} +- {r['emulator_se']}, screen {r['screen_mean']} +- "
          f"{r['screen_se']} (ratio {r['ratio']}), random {r['random_mean']} +- {r['random_se']}; screen late "
          f"mean {r['screen_late_ms_mean']} ms, dropped {r['screen_dropped_mean']} per episode", flush=True)  # fmt: skip
    ok = r["ratio"] is not None and r["ratio"] >= 0.5
    return {"result": {f"bc_{k}": v for k, v in r.items()},
            "goals": {"bc_screen/emulator>=0.5": ok, "bc_screen>random": r["screen_mean"] > r["random_mean"]}}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--display", help="an X display to use (default: start a private Xvfb)")
    ap.add_argument(
        "--part",
        choices=["all", "speed", "bcplay"],
        default="all",
        help="speed: parts 1-3; bcplay: part 4 (needs --bc-run); all: both (part 4 only with --bc-run)",
    )
    ap.add_argument("--bc-run", help="part 4: a run folder (its best checkpoint) or a BC checkpoint folder")
    ap.add_argument("--bc-mode", choices=["sampled", "greedy"], default="sampled",
                    help="part 4: how the policy acts (sampled: its softmax; greedy: argmax at eval.epsilon)")  # fmt: skip
    ap.add_argument(
        "--bc-episodes", type=int, default=0, help="part 4: episodes per path (default 10; --quick 2)"
    )
    ap.add_argument("--bc-max-steps", type=int, default=0,
                    help="part 4: step cap of an episode on both paths (default 1000; --quick 150)")  # fmt: skip
    args = ap.parse_args()
    if args.part == "bcplay" and not args.bc_run:
        ap.error("--part bcplay needs --bc-run RUN_FOLDER_OR_CHECKPOINT")
    xvfb, display = (None, args.display) if args.display else start_xvfb()
    parts = []
    try:
        if args.part in ("all", "speed"):
            parts.append(speed_parts(display, args.quick))
        if args.bc_run:
            parts.append(bc_part(display, args))
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(timeout=30)
    result = {"benchmark": "screen", **{k: v for p in parts for k, v in p["result"].items()},
              "goals": {k: v for p in parts for k, v in p["goals"].items()}}  # fmt: skip
    if not args.bc_run:
        result["bc_skipped"] = "no --bc-run given: part 4 (a BC policy playing the arcade) did not run"
    result.update({
        "quick": args.quick,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}",
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    })  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
