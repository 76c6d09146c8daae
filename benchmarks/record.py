"""Recording throughput and storage size, against baselines run in the same process.

1. Steps/s of one collector recording Breakout with the teacher (emulator + policy + ReplayWriter
   to local disk, shards published) against the raw ALE step loop with the same teacher and no
   recording, alternated in rounds so both see the same machine. Goal: recording keeps >= 70%.
2. Bytes per frame on disk with the default encoding (raw + zstd) against raw uint8 frames
   (210x160x3 = 100,800 bytes). Goal: 50x or better.

    python benchmarks/record.py           # full: 3 rounds of 20,000 steps each
    python benchmarks/record.py --quick   # under a minute

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from rayapp.config import config_to_dict, load_config  # noqa: E402
from rayapp.envs.atari import make_atari_env  # noqa: E402
from rayapp.envs.policies import make_policy  # noqa: E402
from rayapp.record import Collector, _describe  # noqa: E402
from rayapp.replay import ReplayDataset, create_dataset  # noqa: E402


def raw_loop(cfg, steps: int, seed: int) -> float:
    """The emulator stepping under the teacher, nothing recorded: steps/s."""
    env = make_atari_env(cfg.env)
    policy = make_policy(cfg.record, "Breakout", env, np.random.default_rng(seed))
    obs, _ = env.reset(seed=seed)
    policy.reset()
    t0 = time.perf_counter()
    for _ in range(steps):
        obs, r, te, tr, _ = env.step(policy.act(obs)[0])
        if te or tr:
            obs, _ = env.reset()
            policy.reset()
    dt = time.perf_counter() - t0
    env.close()
    return steps / dt


def record_loop(cfg, info, uri: str, steps: int, seed: int, writer: str) -> float:
    """One collector (the same class the Ray actors run) recording whole episodes: steps/s."""
    c = Collector(config_to_dict(cfg), info.to_json(), uri, writer, seed)
    done = 0
    t0 = time.perf_counter()
    while done < steps:
        done += c.record_episode()["steps"]
    c.close()
    return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    a = ap.parse_args()
    steps = a.steps or (4000 if a.quick else 20000)
    rounds = a.rounds or (2 if a.quick else 3)
    cfg = load_config(None, ["env.max_episode_steps=3000"])  # default encoding, shard size, compression
    raw_rates, rec_rates = [], []
    with tempfile.TemporaryDirectory() as tmp:
        uri = os.path.join(tmp, "replays")
        info = create_dataset(uri, _describe(cfg))
        # warm-up of both loops (imports, emulator start, page cache), into a dataset not measured
        raw_loop(cfg, 1000, seed=99)
        warm = os.path.join(tmp, "warmup")
        record_loop(cfg, create_dataset(warm, _describe(cfg)), warm, 1000, seed=99, writer="warm-c00")
        for k in range(rounds):
            raw_rates.append(raw_loop(cfg, steps, seed=k))
            rec_rates.append(record_loop(cfg, info, uri, steps, seed=k, writer=f"bench-c{k:02d}"))
            print(f"round {k}: raw {raw_rates[-1]:,.0f} steps/s, recording {rec_rates[-1]:,.0f} steps/s "
                  f"({rec_rates[-1] / raw_rates[-1]:.2f})", file=sys.stderr)  # fmt: skip
        ds = ReplayDataset(uri)
        frames = sum(ds.read_shard(s, ["step"]).num_rows for s in ds.shards)
        on_disk = ds.total_bytes
        frame_bytes = ds.info.observation.frame_bytes
    ratios = [r / w for r, w in zip(rec_rates, raw_rates)]
    result = {
        "benchmark": "record",
        "quick": a.quick,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}",
        "game": "Breakout",
        "steps_per_round": steps,
        "rounds": rounds,
        "raw_steps_per_s": round(float(np.median(raw_rates)), 1),
        "record_steps_per_s": round(float(np.median(rec_rates)), 1),
        "record_fraction_of_raw": round(float(np.median(ratios)), 3),
        "record_fraction_goal": 0.7,
        "frames_on_disk": frames,
        "bytes_on_disk": on_disk,
        "bytes_per_frame": round(on_disk / frames, 1),
        "raw_bytes_per_frame": frame_bytes,
        "compression_vs_raw": round(frame_bytes * frames / on_disk, 1),
        "compression_goal": 50,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
