"""`DemoMixEpisodeReplayBuffer`: DQN's replay buffer, holding the demonstrations and the online
data, and mixing them at a fixed ratio behind `sample()` (RLPD's two-buffer mixing; the loss is
DQfD's). RLlib's own DQN training step runs unchanged on it: it `add`s the env runners' episodes,
`sample`s a batch, and hands the TD errors back to `update_priorities`.

Each batch draws `demo_ratio` of its rows from the demonstrations and the rest from online play,
each by its own priorities (online eps 0.001 = DQfD's epsilon_a, demonstrations eps 1.0 = its
epsilon_d, so a demonstration is never starved). Until `online_learning_starts` online steps are
in, batches are all demonstrations. Importance-sampling weights are (N P(i))^-beta within each
part, divided by the batch's largest. Demonstrations are never evicted: those that do not fit in
`demo_capacity` steps are refused with `BufferFull`.

With `life_loss_terminal`, a transition that loses a life (the env's `lives` info falls; in a
demonstration, its `lives` column) ends the TD targets through it, as a game over does: on
Breakout a lost life otherwise costs TD only the pause before the next serve (the game goes on
with the same bricks), except on the last life.

A sampled row is a one-step `SingleAgentEpisode`, as RLlib's prioritized buffer returns them:
observations [s_t, s_t+m] with the m-step return (m <= n_step, cut at the episode's end), plus the
one-step transition in `extra_model_outputs` (`reward_1`, `next_obs_1`, `terminated_1`) for DQfD's
1-step TD loss, `is_demo`, `weights` and `n_step`.

The class subclasses RLlib's `PrioritizedEpisodeReplayBuffer` only so that DQN's training step
(`update_priorities_in_episode_replay_buffer` checks `isinstance`) hands it the TD errors; it uses
none of the parent's storage (see tests/test_buffer.py, which fails if that check moves).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.replay_buffers.prioritized_episode_buffer import PrioritizedEpisodeReplayBuffer

from rayapp.rl.framestore import BufferFull, FrameStore, lives_fall

__all__ = ["BufferFull", "DemoMixEpisodeReplayBuffer", "lives_lost"]


def lives_lost(infos) -> np.ndarray | None:
    """The transitions between consecutive infos whose `lives` falls (len(infos) - 1 bools);
    None when the infos carry no lives (a screen game whose reward source reads none)."""
    return lives_fall([i.get("lives") if isinstance(i, dict) else None for i in infos])


class DemoMixEpisodeReplayBuffer(PrioritizedEpisodeReplayBuffer):
    def __init__(
        self,
        capacity: int = 50_000,
        *,
        alpha: float = 0.6,
        demo_capacity: int = 1_000_000,
        demo_ratio: float = 0.5,
        priority_eps: float = 1e-3,
        demo_priority_eps: float = 1.0,
        demo_action_balance: float = 0.0,
        online_learning_starts: int = 0,
        life_loss_terminal: bool = False,
        frame_channels: int = 1,
        frame_stack: int = 4,
        seed: int = 0,
        **kwargs,
    ):
        # the parent's own storage stays minimal: none of it is used
        super().__init__(capacity=2, alpha=alpha, metrics_num_episodes_for_smoothing=kwargs.get("metrics_num_episodes_for_smoothing", 100))
        self.capacity = int(capacity)
        self.online = FrameStore(capacity, evict=True, alpha=alpha, eps=priority_eps, name="online replay")
        self.demos = FrameStore(demo_capacity, evict=False, alpha=alpha, eps=demo_priority_eps, name="demonstration")
        self.demo_ratio = float(demo_ratio)
        self.demo_action_balance = float(demo_action_balance)
        self._demo_counts = np.zeros(0, np.int64)
        self._demo_weight: np.ndarray | None = None
        self.online_learning_starts = int(online_learning_starts)
        self.life_loss_terminal = bool(life_loss_terminal)
        self.c, self.k = int(frame_channels), int(frame_stack)
        self.rng = np.random.default_rng([seed, 7])
        self._last: list[tuple[FrameStore, np.ndarray]] = []
        self.sampled_steps = 0
        self.added_steps = 0

    # ---- adding ----------------------------------------------------------------------------------
    def _split(self, obs0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A stacked observation (k*c, h, w) -> its k-1 older frames and its newest."""
        f = np.asarray(obs0).reshape(self.k, self.c, *np.shape(obs0)[1:])
        return f[:-1], f[-1]

    def add(self, episodes, **kwargs) -> None:
        """The env runners' episode fragments (stacked observations): only each observation's
        newest frame is kept."""
        if isinstance(episodes, SingleAgentEpisode):
            episodes = [episodes]
        for e in episodes:
            obs = e.get_observations()
            if len(obs) < 2 and not e.is_done:
                continue
            frames = np.stack([np.asarray(o).reshape(self.k, self.c, *np.shape(o)[1:])[-1] for o in obs])
            history = self._split(obs[0])[0] if e.t_started > 0 else None
            life_end = lives_lost(e.get_infos()) if self.life_loss_terminal else None
            self.added_steps += self.online.extend(
                e.id_, frames, np.asarray(e.get_actions()), np.asarray(e.get_rewards()),
                terminated=e.is_terminated, done=e.is_done, history=history, life_end=life_end,
            )  # fmt: skip

    def add_demo(self, frames: np.ndarray, actions, rewards, terminated: bool, life_end=None) -> int:
        """One whole demonstration: `frames` (T+1, c, h, w) single preprocessed frames;
        `life_end` (T bools): its transitions that lose a life (used with `life_loss_terminal`)."""
        key = ("demo", self.demos.written)
        cuts = life_end if self.life_loss_terminal else None
        n = self.demos.extend(key, frames, actions, rewards, terminated=terminated, done=True, life_end=cuts)
        counts = np.bincount(np.asarray(actions, np.int64), minlength=len(self._demo_counts))
        self._demo_counts = np.pad(self._demo_counts, (0, len(counts) - len(self._demo_counts))) + counts
        self._demo_weight = self.action_weights(self._demo_counts, self.demo_action_balance)
        return n

    @staticmethod
    def action_weights(counts: np.ndarray, power: float) -> np.ndarray | None:
        """Demonstration priorities times (action frequency)^-power, normalised to mean 1 over the
        demonstrations: the teacher's rare actions (FIRE, 0.3% of Breakout's steps) are replayed
        often enough that TD updates on the common ones do not erase them (benchmarks/RESULTS.md)."""
        if power <= 0 or counts.sum() == 0:
            return None
        freq = counts / counts.sum()
        raw = np.where(counts > 0, np.maximum(freq, 1e-12) ** -power, 0.0)
        return raw / float((raw * freq).sum())

    # ---- sampling --------------------------------------------------------------------------------
    def split(self, n: int, demos_only: bool = False) -> tuple[int, int]:
        """(demonstration rows, online rows) of a batch of n."""
        online_ready = self.online.transitions >= max(1, self.online_learning_starts)
        if not self.demos.transitions or (self.demo_ratio <= 0 and not demos_only):
            return 0, n
        if demos_only or not online_ready:
            return n, 0
        d = int(round(n * self.demo_ratio))
        return d, n - d

    def sample(self, num_items: int | None = None, *, n_step: int = 1, gamma: float = 0.99, beta: float = 0.4,
               demos_only: bool = False, **kwargs) -> list[SingleAgentEpisode]:  # fmt: skip
        n = int(num_items or 32)
        n_step = int(n_step[0] if isinstance(n_step, tuple | list) else n_step)
        parts = list(zip((self.demos, self.online), self.split(n, demos_only), (1.0, 0.0), strict=True))
        self._last, rows = [], []
        for store, m, flag in parts:
            if m == 0:
                continue
            if store.transitions == 0:
                raise BufferFull(f"the {store.name} buffer is empty: nothing to sample")
            g, w = store.sample(m, self.rng, beta if beta is not None else 0.0)
            self._last.append((store, g))
            rows.append((store, g, w, flag))
        wmax = max(float(w.max()) for _, _, w, _ in rows)
        out = []
        for store, g, w, flag in rows:
            ret = store.returns(g, n_step, gamma)
            g1 = store.next[g % store.capacity]
            obs, obs_n, obs_1 = store.stack(g, self.k), store.stack(ret["end"], self.k), store.stack(g1, self.k)
            term_1 = store.terminal[g1 % store.capacity] | store.life_end[g % store.capacity]
            for i in range(len(g)):
                out.append(SingleAgentEpisode(
                    observations=[obs[i], obs_n[i]],
                    actions=[int(store.action[g[i] % store.capacity])],
                    rewards=[float(ret["return"][i])],
                    terminated=bool(ret["terminal"][i]),
                    extra_model_outputs={
                        "weights": [float(w[i] / wmax)], "n_step": [int(ret["steps"][i])], "is_demo": [flag],
                        "reward_1": [float(store.reward[g[i] % store.capacity])], "next_obs_1": [obs_1[i]],
                        "terminated_1": [bool(term_1[i])],
                    },
                    len_lookback_buffer=0,
                ))  # fmt: skip
        self.sampled_steps += n
        return out

    def update_priorities(self, priorities, module_id=None) -> None:
        """TD errors of the last `sample()`, in its row order (demonstrations first)."""
        td = np.asarray(priorities, np.float64).ravel()
        offset = 0
        for store, g in self._last:
            weight = self._demo_weight if store is self.demos else None
            store.update_priorities(g, td[offset : offset + len(g)], weight)
            offset += len(g)
        if offset != len(td):
            raise ValueError(f"{len(td)} TD errors for the {offset} rows of the last sample")
        self._last = []

    # ---- RLlib's buffer interface ----------------------------------------------------------------
    def __len__(self) -> int:
        return self.online.transitions + self.demos.transitions

    def get_num_timesteps(self, module_id=None) -> int:
        return self.online.transitions

    def get_num_episodes(self, module_id=None) -> int:
        return len(self.online.open)

    def get_sampled_timesteps(self, module_id=None) -> int:
        return self.sampled_steps

    def get_added_timesteps(self, module_id=None) -> int:
        return self.added_steps

    def get_metrics(self) -> dict[str, Any]:
        """Reduced metrics in RLlib's form (the training step aggregates them under `replay_buffer`)."""
        for key, value in (("online_steps", self.online.transitions), ("demo_steps", self.demos.transitions),
                           ("online_max_priority", self.online.max_priority),
                           ("bytes", self.online.nbytes + self.demos.nbytes), ("sampled_steps", self.sampled_steps)):
            self.metrics.log_value(key, value, window=1)  # fmt: skip
        return self.metrics.reduce()

    def get_state(self) -> dict[str, Any]:
        """The online data and the demonstrations' priorities (demonstrations are re-read from the
        dataset on every run, before the state is set)."""
        return {"online": self.online.get_state(data=True), "demos": self.demos.get_state(data=False),
                "sampled_steps": self.sampled_steps, "added_steps": self.added_steps,
                "rng": self.rng.bit_generator.state}  # fmt: skip

    def set_state(self, state: dict[str, Any]) -> bool:
        """Restore; True when the demonstrations' priorities were restored too (the demonstrations
        added before are the ones saved with them), False when they keep fresh priorities."""
        self.online.set_state(state["online"])
        self.sampled_steps, self.added_steps = int(state["sampled_steps"]), int(state["added_steps"])
        self.rng.bit_generator.state = state["rng"]
        if list(state["demos"]["fingerprint"]) != self.demos.fingerprint():
            return False
        self.demos.set_state(state["demos"])
        return True
