"""Recorded episodes -> RLlib `SingleAgentEpisode`s for DQN's replay buffer.

Observations are stacked exactly as the ingest pipeline and the env wrapper stack them (the first
frame of an episode pads the stack), and stay uint8 (28 KB per 4x84x84 step). A row holds the
observation *before* its action, so an episode of T rows gives T transitions: the next state of the
last one is the game-over frame for terminated episodes (never bootstrapped from, so the last
observation stands in for it), and unknown for truncated or cut episodes, whose last row is dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from rayapp.data.index import DatasetIndex
from rayapp.data.samples import stack_indices
from rayapp.errors import RayappError
from rayapp.frames import FrameSpec, Preprocessor
from rayapp.replay.reader import ReplayDataset

__all__ = ["DemoStats", "demo_episodes"]


@dataclass
class DemoStats:
    episodes: int = 0
    transitions: int = 0
    nonzero_rewards: int = 0
    score: list[float] = field(default_factory=list)
    skipped_shards: int = 0


def _stack(frames: np.ndarray, k: int) -> np.ndarray:
    """(T, c, h, w) -> (T, c*k, h, w) within one episode, padded with its first frame."""
    t = len(frames)
    idx = stack_indices(np.zeros(t, np.int64), np.arange(t), k)
    return frames[idx].reshape(t, -1, *frames.shape[2:])


def demo_episodes(
    uri: str,
    frames: FrameSpec,
    split: str | None = "train",
    clip_rewards: bool = True,
    split_seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    max_corrupt_shards: int = 0,
    max_steps: int = 0,
    stats: DemoStats | None = None,
) -> Iterator:
    """Yield `SingleAgentEpisode`s of the dataset's `split` episodes (the BC split, so held-out
    episodes stay held out); `stats` collects counts as they go."""
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    ds = ReplayDataset(uri)
    info = ds.info
    if len(info.actions) != 1:
        raise RayappError(
            f"DQN fine-tuning needs one discrete control; {uri} has {len(info.actions)} ({info.action_columns})"
        )
    keep = None
    if split is not None:
        index = DatasetIndex.build(ds, "action", val_fraction, test_fraction, split_seed, max_corrupt_shards)
        keep = {e for e, s in index.episode_split.items() if s == split}
    pre = Preprocessor(frames, info.observation.shape)
    c, h, w = pre.out_shape
    obs_space = gym.spaces.Box(0, 255, (c * frames.frame_stack, h, w), np.uint8)
    act_space = gym.spaces.Discrete(info.actions[0].n)
    st = stats if stats is not None else DemoStats()
    for ep in ds.iter_episodes(max_corrupt_shards=max_corrupt_shards):
        if keep is not None and ep.episode_id not in keep:
            continue
        rewards = ep.rewards.astype(np.float32)
        st.nonzero_rewards += int(np.count_nonzero(rewards))
        st.score.append(float(rewards.sum()))
        if clip_rewards:
            rewards = np.sign(rewards)
        obs = _stack(pre(ep.obs), frames.frame_stack)
        terminated = bool(ep.terminated[-1])
        if terminated:
            observations = np.concatenate([obs, obs[-1:]])
            actions, rew = ep.actions, rewards
        else:  # the state after the last row is unknown: drop the last transition
            if ep.length < 2:
                continue
            observations, actions, rew = obs, ep.actions[:-1], rewards[:-1]
        n = len(actions)
        yield SingleAgentEpisode(
            observations=list(observations),
            actions=[int(a) for a in actions],
            rewards=[float(r) for r in rew],
            terminated=terminated,
            truncated=not terminated,
            observation_space=obs_space,
            action_space=act_space,
            len_lookback_buffer=0,
        )
        st.episodes += 1
        st.transitions += n
        if max_steps and st.transitions >= max_steps:
            break
    st.skipped_shards = len(ds.skipped)
