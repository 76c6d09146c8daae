"""Who plays while recording: the teacher, random, or a policy with epsilon noise.

`act(obs)` returns the action to take and, for a noisy policy, the action the underlying policy
wanted (recorded as the `teacher_action` extra, so imitation can learn the intent while offline RL
sees the diverse states and the actions actually taken).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from rayapp.config import RecordConfig
from rayapp.envs.teachers import Teacher, make_teacher

__all__ = ["Policy", "RandomPolicy", "TeacherPolicy", "NoisyPolicy", "make_policy"]


class Policy:
    name = "policy"

    def reset(self) -> None:
        """Called at the start of every episode."""

    def act(self, obs: np.ndarray) -> tuple[int, int | None]:
        raise NotImplementedError


class RandomPolicy(Policy):
    name = "random"

    def __init__(self, n: int, rng: np.random.Generator):
        self.n, self.rng = n, rng

    def act(self, obs: np.ndarray) -> tuple[int, int | None]:
        return int(self.rng.integers(self.n)), None


class TeacherPolicy(Policy):
    name = "teacher"

    def __init__(self, teacher: Teacher):
        self.teacher = teacher

    def reset(self) -> None:
        self.teacher.reset()

    def act(self, obs: np.ndarray) -> tuple[int, int | None]:
        return self.teacher.act(), None


class NoisyPolicy(Policy):
    """With probability epsilon a uniformly random action replaces the inner policy's."""

    def __init__(self, inner: Policy, n: int, epsilon: float, rng: np.random.Generator):
        self.inner, self.n, self.epsilon, self.rng = inner, n, epsilon, rng
        self.name = f"noisy_{inner.name}"

    def reset(self) -> None:
        self.inner.reset()

    def act(self, obs: np.ndarray) -> tuple[int, int | None]:
        wanted, _ = self.inner.act(obs)
        if self.rng.random() < self.epsilon:
            return int(self.rng.integers(self.n)), wanted
        return wanted, wanted


def make_policy(cfg: RecordConfig, game: str, env: gym.Env, rng: np.random.Generator) -> Policy:
    n = int(env.action_space.n)
    if cfg.policy == "random":
        return RandomPolicy(n, rng)
    teacher = TeacherPolicy(make_teacher(game, env))
    if cfg.policy == "noisy_teacher":
        return NoisyPolicy(teacher, n, cfg.epsilon, rng)
    return teacher
