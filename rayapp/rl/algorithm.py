"""`DQfD`: RLlib's DQN, unchanged online, with demonstrations in its replay buffer.

Online, DQN's own training step runs: it samples the env runners, adds their episodes to the
replay buffer (`rayapp.rl.buffer.DemoMixEpisodeReplayBuffer`, which also holds the
demonstrations and mixes them into every batch), makes `training_intensity` updates and hands the
TD errors back for the priorities; replay and learner metrics and timers are RLlib's. The learner
(`rayapp.rl.learner.DQfDTorchLearner`) computes DQfD's loss.

What this class adds: `add_demo` (demonstrations into the buffer), `offline_update` (the offline
phase: a batch of demonstrations into `learner_group.update`, no env interaction; RLlib 2.60 has no
offline DQN) and the offline progress in the algorithm's state, so a resumed run does not repeat it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.rllib.algorithms.dqn import DQN
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    LEARNER_RESULTS,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    TD_ERROR_KEY,
)
from ray.rllib.utils.numpy import convert_to_numpy

from rayapp.rl.learner import OFFLINE_CLOCK

__all__ = ["DQfD"]


class DQfD(DQN):
    def setup(self, config) -> None:
        super().setup(config)
        self.offline_done = 0  # offline updates made (they survive checkpoints)

    @property
    def buffer(self):
        return self.local_replay_buffer

    # ---- demonstrations --------------------------------------------------------------------------
    def add_demo(self, frames: np.ndarray, actions, rewards, terminated: bool, life_end=None) -> int:
        """One demonstration (single preprocessed frames, T+1 of them; `life_end`: its transitions
        that lose a life); returns its transitions."""
        return self.buffer.add_demo(frames, actions, rewards, terminated, life_end)

    @property
    def demo_steps(self) -> int:
        return self.buffer.demos.transitions

    @property
    def updates(self) -> int:
        """Learner updates so far, offline and online (each draws one batch from the buffer)."""
        return self.buffer.get_sampled_timesteps() // self.config.train_batch_size_per_learner

    @property
    def env_steps(self) -> int:
        return int(self.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0) or 0)

    # ---- the offline phase -----------------------------------------------------------------------
    def offline_update(self) -> list[dict[str, Any]]:
        """One learner update on a batch of demonstrations, no env interaction."""
        cfg = self.config
        episodes = self.buffer.sample(
            num_items=cfg.train_batch_size_per_learner,
            n_step=cfg.n_step,
            gamma=cfg.gamma,
            beta=cfg.replay_buffer_config.get("beta"),
            demos_only=True,
        )
        self.offline_done += 1
        upe = float(cfg.learner_config_dict.get("updates_per_env_step", 0.25))
        results = self.learner_group.update(
            episodes=episodes,
            timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: self.env_steps, OFFLINE_CLOCK: self.offline_done / upe},
        )
        td = np.concatenate(
            [np.concatenate(convert_to_numpy(r["default_policy"].pop(TD_ERROR_KEY).peek())) for r in results]
        )
        self.buffer.update_priorities(td, "default_policy")
        self.metrics.aggregate(results, key=LEARNER_RESULTS)
        return results

    def sync_env_runners(self) -> None:
        self.env_runner_group.sync_weights(
            from_worker_or_learner_group=self.learner_group, policies={"default_policy"}, inference_only=True
        )

    # ---- checkpoints: the offline progress travels with the algorithm's state --------------------
    def get_state(self, *args, **kwargs) -> dict[str, Any]:
        state = super().get_state(*args, **kwargs)
        # the update count is the buffer's sampled rows / batch: it travels here too, so an algorithm
        # restored without its buffer's state still knows how far it got
        state["rayapp"] = {"offline_done": self.offline_done, "sampled_steps": self.buffer.sampled_steps}
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        if "rayapp" in state:
            self.offline_done = int(state["rayapp"].get("offline_done", state["rayapp"].get("updates", 0)))
            self.buffer.sampled_steps = int(state["rayapp"].get("sampled_steps", self.buffer.sampled_steps))
