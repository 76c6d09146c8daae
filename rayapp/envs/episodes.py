"""Playing whole episodes with a trained policy or a baseline (teacher, random): what evaluation,
fine-tuning's evaluation curve and the report share. Runs in a Ray task or in-process."""

from __future__ import annotations

import time
from typing import Any

import cv2
import numpy as np

from rayapp.config import EnvConfig, RecordConfig
from rayapp.envs.atari import game_name, make_atari_env
from rayapp.envs.policies import make_policy
from rayapp.envs.wrappers import PixelStack
from rayapp.frames import FrameSpec
from rayapp.models.agent import Q_EPSILON, Agent

__all__ = ["overlay", "play_episodes"]


def overlay(frame: np.ndarray, text: str) -> np.ndarray:
    img = cv2.resize(frame, (frame.shape[1] * 2, frame.shape[0] * 2), interpolation=cv2.INTER_NEAREST)
    cv2.putText(
        img, text, (6, img.shape[0] - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA
    )
    return img


def play_episodes(player: str, mode: str, seeds: list[int], env_cfg: dict[str, Any], checkpoint: str | None,
                  frames_json: dict | None, epsilon: float, video_steps: int = 0,
                  q_epsilon: float = Q_EPSILON) -> list[dict[str, Any]]:  # fmt: skip
    """Play one episode per seed; returns seed, score, steps and action counts (and video frames
    for the first episode when `video_steps` > 0). A policy's `mode` is greedy (with `epsilon`)
    or sampled (its softmax, or epsilon-greedy at `q_epsilon` for a Q-network: see `Agent`).
    Seeds come from `rayapp.envs.seeds`. Runs in a Ray task or in-process."""
    ec = EnvConfig(**env_cfg)
    env = make_atari_env(ec)
    results = []
    if player == "policy":
        env = PixelStack(env, FrameSpec.from_json(frames_json))
        agent = Agent(checkpoint, mode, epsilon, seed=seeds[0] if seeds else 0, q_epsilon=q_epsilon)
    else:
        agent = make_policy(
            RecordConfig(policy=player),
            game_name(ec.game),
            env,
            np.random.default_rng(seeds[0] if seeds else 0),
        )
    n_actions = int(env.action_space.n) if hasattr(env.action_space, "n") else 0
    for i, seed in enumerate(seeds):
        obs, _ = env.reset(seed=seed)
        agent.reset()
        score, steps, done = 0.0, 0, False
        counts = np.zeros(max(1, n_actions), np.int64)
        video: list[np.ndarray] = []
        t0 = time.perf_counter()
        while not done:
            a = agent.act(obs) if player == "policy" else agent.act(obs)[0]
            if n_actions:
                counts[a] += 1
            obs, r, te, tr, _ = env.step(a)
            score += float(r)
            steps += 1
            done = te or tr
            if i == 0 and len(video) < video_steps:
                raw = env.last_frame if player == "policy" else obs
                video.append(
                    overlay(raw, f"{mode if player == 'policy' else player} score {score:g} step {steps}")
                )
        results.append({"seed": seed, "score": score, "steps": steps, "truncated": bool(tr), "actions": counts.tolist(),
                        "steps_per_s": steps / (time.perf_counter() - t0), "video": video})  # fmt: skip
    env.close()
    return results
