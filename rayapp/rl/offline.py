"""Recorded episodes -> demonstrations for DQN's replay buffer, one episode at a time.

Frames are preprocessed exactly as the ingest pipeline and the env wrapper preprocess them, and are
not stacked: the replay buffer keeps one uint8 frame per step (7 KB at 84x84 gray) and stacks at
sampling time as the env does (the first frame of an episode pads the stack). A row holds the
observation *before* its action, so an episode of T rows gives T transitions: the next state of the
last one is the game-over frame for terminated episodes (never bootstrapped from, so the last
observation stands in for it), and unknown for truncated or cut episodes, whose last row is dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from rayapp.data.index import DatasetIndex
from rayapp.errors import RayappError
from rayapp.frames import FrameSpec, Preprocessor
from rayapp.replay.reader import ReplayDataset
from rayapp.rl.framestore import lives_fall

__all__ = ["DemoEpisode", "DemoStats", "demo_episodes", "lives_lost_in"]


@dataclass
class DemoStats:
    episodes: int = 0
    transitions: int = 0
    nonzero_rewards: int = 0
    score: list[float] = field(default_factory=list)
    skipped_shards: int = 0


@dataclass
class DemoEpisode:
    frames: np.ndarray  # (T+1, c, h, w) uint8: the observation before every action, and the last
    actions: np.ndarray  # (T,)
    rewards: np.ndarray  # (T,) float32, clipped if asked
    terminated: bool  # the last observation is game over
    life_lost: np.ndarray | None = None  # (T,) bool: the transitions that lose a life (from `lives`)


def lives_lost_in(lives) -> np.ndarray | None:
    """Row t's action lost a life: the `lives` column (lives after each row's step) falls at t;
    None without the column or with gaps in it."""
    falls = None if lives is None else lives_fall(lives)
    return None if falls is None else np.concatenate([[False], falls])


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
    """Yield `DemoEpisode`s of the dataset's `split` episodes (the BC split, so held-out episodes
    stay held out); `stats` collects counts as they go."""
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
    st = stats if stats is not None else DemoStats()
    for ep in ds.iter_episodes(max_corrupt_shards=max_corrupt_shards):
        if keep is not None and ep.episode_id not in keep:
            continue
        rewards = ep.rewards.astype(np.float32)
        st.nonzero_rewards += int(np.count_nonzero(rewards))
        st.score.append(float(rewards.sum()))
        if clip_rewards:
            rewards = np.sign(rewards)
        obs = pre(ep.obs)
        terminated = bool(ep.terminated[-1])
        lost = lives_lost_in(ep.extras.get("lives"))
        if terminated:  # the game-over frame itself is not recorded: the last one stands in for it
            observations = np.concatenate([obs, obs[-1:]])
            actions, rew = ep.actions, rewards
        else:  # the state after the last row is unknown: drop the last transition
            if ep.length < 2:
                continue
            observations, actions, rew = obs, ep.actions[:-1], rewards[:-1]
            lost = None if lost is None else lost[:-1]
        n = len(actions)
        yield DemoEpisode(observations, np.asarray(actions, np.int64), np.asarray(rew, np.float32), terminated, lost)
        st.episodes += 1
        st.transitions += n
        if max_steps and st.transitions >= max_steps:
            break
    st.skipped_shards = len(ds.skipped)
