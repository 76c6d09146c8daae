"""Why Pong's BC does not learn: the same network and optimiser on the same recorded frames, with
the inputs as rayapp feeds them today (uint8 / 255) against three centrings, in one process.

    python benchmarks/bc_inputs.py runs/beat-teacher/pong/bc/replays           # 1,500 steps per variant
    python benchmarks/bc_inputs.py runs/beat-teacher/pong/bc/replays --quick   # 150 steps, 2 episodes

Variants: raw (x / 255, today's input), scalar (minus the mean of all pixels), median (minus each
frame's median: a per-frame background), mean_frame (minus the per-pixel mean frame of the data).
Nature CNN + a linear head, Adam, batch 128, the first `--episodes` episodes, FrameSpec defaults
(gray 84x84, 4 stacked). Accuracy is on 1,024 random training samples (how well it fits, not how
well it generalises), beside the majority class's share. Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def load(uri: str, episodes: int) -> tuple[np.ndarray, np.ndarray]:
    from rayapp.frames import FrameSpec, FrameStacker
    from rayapp.replay.reader import ReplayDataset

    xs, ys = [], []
    for ep in itertools.islice(ReplayDataset(uri).iter_episodes(), episodes):
        st = FrameStacker(FrameSpec(), ep.obs.shape[1:])
        xs.append(np.stack([st.reset(ep.obs[0])] + [st.push(f) for f in ep.obs[1:]]))
        ys.append(np.asarray(ep.actions, np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def centred(x: np.ndarray, how: str) -> np.ndarray:
    f = x.astype(np.float32) / 255.0
    if how == "scalar":
        f -= f.mean()
    elif how == "median":
        f -= np.median(f.reshape(len(f), -1), axis=1)[:, None, None, None]
    elif how == "mean_frame":
        f -= f.mean(0, keepdims=True)
    return f


def fit(x: np.ndarray, y: np.ndarray, classes: int, steps: int, lr: float, seed: int = 0) -> list[dict]:
    import torch
    from torch import nn

    from rayapp.models.nets import NatureCNN

    torch.manual_seed(seed)
    net = nn.Sequential(NatureCNN(tuple(x.shape[1:])), nn.Linear(512, classes))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    xt, yt, rng, curve = torch.from_numpy(x), torch.from_numpy(y), np.random.default_rng(seed), []
    for it in range(1, steps + 1):
        i = torch.from_numpy(rng.integers(0, len(y), 128))
        loss = nn.functional.cross_entropy(net(xt[i]), yt[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % max(1, steps // 5) == 0:
            with torch.no_grad():
                j = torch.from_numpy(rng.integers(0, len(y), 1024))
                acc = float((net(xt[j]).argmax(1) == yt[j]).float().mean())
            curve.append({"step": it, "loss": round(loss.item(), 3), "train_accuracy": round(acc, 3)})
    return curve


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("uri", help="a recorded dataset (its first --episodes episodes are used)")
    ap.add_argument("--episodes", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=2.5e-4)
    ap.add_argument("--variants", default="raw,scalar,median,mean_frame")
    ap.add_argument("--quick", action="store_true", help="150 steps on 2 episodes (the path, not the figures)")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(os.cpu_count() or 2)
    steps = 150 if a.quick else a.steps
    if a.quick:
        a.episodes = min(a.episodes, 2)
    x, y = load(a.uri, a.episodes)
    out: dict = {"benchmark": "bc_inputs", "uri": a.uri, "samples": len(y), "steps": steps, "lr": a.lr,
                 "majority_share": round(float(np.bincount(y).max() / len(y)), 3)}  # fmt: skip
    for how in a.variants.split(","):
        t0 = time.perf_counter()
        curve = fit(centred(x, how), y, int(y.max()) + 1, steps, a.lr)
        out[how] = {"final_train_accuracy": curve[-1]["train_accuracy"], "final_loss": curve[-1]["loss"],
                    "curve": curve, "seconds": round(time.perf_counter() - t0)}  # fmt: skip
        print(how, out[how]["final_train_accuracy"], flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
