"""Who plays while recording: the teacher, random, a trained checkpoint, or either with epsilon noise.

`act(obs)` returns the action to take and, for a noisy policy, the action the underlying policy
wanted (recorded as the `teacher_action` extra, so imitation can learn the intent while offline RL
sees the diverse states and the actions actually taken).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from rayapp.config import RecordConfig
from rayapp.envs.teachers import Teacher, make_teacher
from rayapp.errors import ConfigError
from rayapp.frames import FrameStacker

__all__ = ["Policy", "RandomPolicy", "TeacherPolicy", "NoisyPolicy", "CheckpointPolicy", "make_policy"]


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
        a = self.teacher.act()
        return a, a


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


class CheckpointPolicy(Policy):
    """A trained policy (greedy) acting on raw frames: it keeps its own preprocessed frame stack."""

    name = "checkpoint"

    def __init__(self, path: str, env: gym.Env, game: str):
        from rayapp.models.agent import Agent

        self.agent = Agent(path)
        trained = self.agent.ckpt.game.get("game")
        n = int(env.action_space.n)
        if trained != game or self.agent.ckpt.spec.controls[0][1] != n:
            raise ConfigError(
                f"record.checkpoint {self.agent.ckpt.path} plays {trained} with {self.agent.ckpt.spec.controls[0][1]} actions; "
                f"env.game={game} has {n}"
            )
        self.stacker = FrameStacker(self.agent.ckpt.frames, env.observation_space.shape)
        self._new = True

    def reset(self) -> None:
        self._new = True
        self.agent.reset()

    def act(self, obs: np.ndarray) -> tuple[int, int | None]:
        x = self.stacker.reset(obs) if self._new else self.stacker.push(obs)
        self._new = False
        a = int(self.agent.act(x))
        return a, a


def make_policy(cfg: RecordConfig, game: str, env: gym.Env, rng: np.random.Generator) -> Policy:
    """The recording policy; `teacher_action` records what the teacher (or agent) wanted."""
    n = int(env.action_space.n)
    if cfg.policy == "random":
        return RandomPolicy(n, rng)
    if cfg.policy == "checkpoint":
        agent = CheckpointPolicy(cfg.checkpoint, env, game)
        return NoisyPolicy(agent, n, cfg.epsilon, rng) if cfg.epsilon > 0 else agent
    teacher = TeacherPolicy(make_teacher(game, env))
    if cfg.policy == "noisy_teacher":
        return NoisyPolicy(teacher, n, cfg.epsilon, rng)
    return teacher
