"""Subnormal floats in Adam's moments: how much they slow a DQN update on this CPU, and what
flushing them to zero (`rayapp.models.numerics.flush_denormals`, torch.set_flush_denormal) buys.

On sparse inputs (a ball that crosses most positions of the screen rarely) the first fully
connected layer's weights for a position get gradient only when the ball is there; in between,
Adam's first moment decays by beta1 = 0.9 a step through the subnormal range (1.2e-38 down to
1.4e-45, ~150 steps), where x86 arithmetic is several times slower. A Pong fine-tuning run here had
1.05M of that layer's 1.6M first moments subnormal at 20k env steps, and its learner's updates/s
had fallen from 7 to 4.

Both arms train rayapp's DQN network (Nature CNN, 84x84x4 gray, 6 actions) from the same initial
weights on the same batches: the 1-step double-DQN Huber loss of DQN on real Pong frames (played
here by a random policy, 4-frame stacks), a target network synced every 500 updates, Adam 1e-4
(foreach, as rayapp's learner), global-norm clipping at 10. Arm `default` is PyTorch's default
(subnormals kept); arm `flush` flushes them. The arms alternate in blocks of 50 updates in this
process, so both see the same machine noise; updates/s per block, the arms' ratio over the last
half, and the fraction of subnormal first moments in each arm's first FC layer at the end.

    python benchmarks/denormals.py            # 3,000 updates per arm (about 15 minutes here)
    python benchmarks/denormals.py --quick    # 150 updates per arm: the path, not the figure

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32


def pong_frames(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n+1 preprocessed Pong frames (84x84 gray) from random play, its actions and rewards."""
    import cv2

    from rayapp.config import EnvConfig
    from rayapp.envs.atari import make_atari_env

    env = make_atari_env(EnvConfig(game="Pong", max_episode_steps=100_000))
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    frames, actions, rewards = [], [], []
    for _ in range(n + 1):
        frames.append(cv2.resize(cv2.cvtColor(obs, cv2.COLOR_RGB2GRAY), (84, 84), interpolation=cv2.INTER_AREA))
        a = int(rng.integers(env.action_space.n))
        obs, r, term, trunc, _ = env.step(a)
        actions.append(a)
        rewards.append(float(r))
        if term or trunc:
            obs, _ = env.reset()
    env.close()
    return np.stack(frames), np.array(actions[:n]), np.array(rewards[:n], np.float32)


class Arm:
    def __init__(self, name: str, net: torch.nn.Module, flush: bool):
        self.name, self.flush = name, flush
        self.net, self.target = copy.deepcopy(net), copy.deepcopy(net)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-4, foreach=True)
        self.updates, self.blocks = 0, []

    def update(self, s: torch.Tensor, a: torch.Tensor, r: torch.Tensor, s1: torch.Tensor) -> None:
        q = self.net(s)[0].gather(1, a[:, None]).squeeze(1)
        with torch.no_grad():
            best = self.net(s1)[0].argmax(1, keepdim=True)
            y = r + 0.99 * self.target(s1)[0].gather(1, best).squeeze(1)
        loss = F.smooth_l1_loss(q, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))  # as rayapp's learner
        if norm > 10.0:
            torch._foreach_mul_(grads, 10.0 / (norm + 1e-6))
        self.opt.step()
        self.updates += 1
        if self.updates % 500 == 0:
            self.target.load_state_dict(self.net.state_dict())

    def subnormal_fraction(self) -> float:
        """Of the first fully connected layer's Adam first moments (the largest tensor)."""
        biggest = max(self.net.parameters(), key=lambda p: p.numel())
        m = self.opt.state[biggest]["exp_avg"]
        return float(((m != 0) & (m.abs() < TINY)).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--updates", type=int, default=3000, help="updates per arm")
    ap.add_argument("--block", type=int, default=50, help="updates per timed block (the arms alternate)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.updates, a.block = 150, 25
    from rayapp.models.nets import ModelSpec, build_model

    torch.set_num_threads(a.threads)
    frames, actions, rewards = pong_frames(4000 if not a.quick else 600)
    stacks = np.lib.stride_tricks.sliding_window_view(frames, 4, axis=0).transpose(0, 3, 1, 2)  # (N-3, 4, 84, 84)
    n = len(stacks) - 1
    torch.manual_seed(0)
    net = build_model(ModelSpec((4, 84, 84), (("action", 6),)))
    arms = [Arm("default", net, flush=False), Arm("flush", net, flush=True)]
    rng = np.random.default_rng(0)
    t_all = time.perf_counter()
    for _ in range(a.updates // a.block):
        idx = [rng.integers(0, n, a.batch) for _ in range(a.block)]  # both arms get the same batches
        for arm in arms:
            torch.set_flush_denormal(arm.flush)
            t0 = time.perf_counter()
            for i in idx:
                arm.update(torch.from_numpy(stacks[i].copy()), torch.from_numpy(actions[i + 3]),
                           torch.from_numpy(rewards[i + 3]), torch.from_numpy(stacks[i + 1].copy()))  # fmt: skip
            arm.blocks.append(a.block / (time.perf_counter() - t0))
        torch.set_flush_denormal(False)
        print(" ".join(f"{arm.name} {arm.blocks[-1]:.1f}/s" for arm in arms), f"after {arms[0].updates} updates",
              file=sys.stderr, flush=True)  # fmt: skip
    half = len(arms[0].blocks) // 2
    rate = {arm.name: float(np.mean(arm.blocks[half:])) for arm in arms}
    out = {
        "benchmark": "denormals", "quick": a.quick, "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "torch": torch.__version__, "threads": a.threads, "updates_per_arm": arms[0].updates, "batch": a.batch,
        "updates_per_s_first_block": {arm.name: round(arm.blocks[0], 2) for arm in arms},
        "updates_per_s_last_half": {k: round(v, 2) for k, v in rate.items()},
        "speedup_flush_over_default_last_half": round(rate["flush"] / rate["default"], 3),
        "default_slowdown_last_half_vs_first_block": round(rate["default"] / arms[0].blocks[0], 3),
        "subnormal_first_moments_fc": {arm.name: round(arm.subnormal_fraction(), 4) for arm in arms},
        "seconds": round(time.perf_counter() - t_all),
    }  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
