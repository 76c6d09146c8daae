"""`FrameStore`: the replay memory of one kind of data (demonstrations, or online play), one
preprocessed frame per buffered step, frame stacks and n-step returns built at sampling time.

Each observation of an episode takes one slot: its newest frame (`c x h x w`, uint8; 7 KB for
84x84 gray instead of 28 KB for the 4-frame stack), the action taken there and the reward that
followed. Slots are linked to the previous and next observation of their episode (episodes from
16 envs arrive interleaved, in fragments), so a sample stacks `frame_stack` frames by walking back
(padding with the episode's first frame, as the env and the ingest pipeline do) and sums the
n-step return by walking forward, stopping at the episode's end:

- a terminal observation (game over) ends the return there with no bootstrap: the last n-1 steps
  of every episode, the game-over step included, are learned from, with a shorter return;
- where the data ends without a game over (a time limit, or an episode still being played), the
  return bootstraps from the last observation there is, after m < n steps;
- a transition marked `life_end` (a life lost, with `finetune.life_loss_terminal`) ends the return
  after its reward with no bootstrap, as a game over would, while the episode goes on for stacking
  and for the transitions after it (DQN's "terminal on life loss", Mnih et al. 2015).

Priorities live in a `SumTree` over the slots; a slot is drawn in proportion to
(|TD error| + eps)^alpha, new transitions at the highest priority seen so far. Online data is a
ring that overwrites its oldest slots; a store made with `evict=False` (the demonstrations) refuses
data beyond its capacity instead (`BufferFull`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rayapp.errors import RayappError
from rayapp.rl.sumtree import SumTree

__all__ = ["BufferFull", "FrameStore", "lives_fall"]


class BufferFull(RayappError):
    pass


def lives_fall(values) -> np.ndarray | None:
    """Where a sequence of life counts falls: values[1:] < values[:-1]; None when one is missing
    (None or NaN: a source that reads no lives)."""
    v = np.asarray([np.nan if x is None else x for x in values], np.float64)
    if len(v) == 0 or np.isnan(v).any():
        return None
    return v[1:] < v[:-1]


class FrameStore:
    def __init__(self, capacity: int, *, evict: bool, alpha: float, eps: float, name: str = "replay"):
        if capacity < 2:
            raise RayappError(f"{name} buffer capacity must be at least 2 steps, got {capacity}")
        self.capacity, self.evict, self.alpha, self.eps, self.name = int(capacity), evict, alpha, eps, name
        self.frames: np.ndarray | None = None  # (capacity, c, h, w), allocated at the first add
        self.action = np.zeros(capacity, np.int64)
        self.reward = np.zeros(capacity, np.float32)
        self.prev = np.full(capacity, -1, np.int64)  # global index of the episode's previous observation
        self.next = np.full(capacity, -1, np.int64)  # ... of its next one (-1: none, yet or ever)
        self.terminal = np.zeros(capacity, bool)  # a game-over observation
        self.life_end = np.zeros(capacity, bool)  # the transition from this observation loses a life
        self.gidx = np.full(capacity, -1, np.int64)  # the global index a slot holds now
        self.tree = SumTree(capacity)
        self.written = 0  # observations ever written (the next global index)
        self.transitions = 0  # slots that can be drawn (an observation with a known successor)
        self.max_priority = 1.0
        self.open: dict[Any, int] = {}  # episode key -> global index of its newest observation

    # ---- writing ---------------------------------------------------------------------------------
    @property
    def oldest(self) -> int:
        return max(0, self.written - self.capacity)

    def _valid(self, g: np.ndarray) -> np.ndarray:
        return (g >= self.oldest) & (g >= 0)

    def _write_frames(self, frames: np.ndarray) -> np.ndarray:
        n = len(frames)
        if self.frames is None:
            self.frames = np.empty((self.capacity, *frames.shape[1:]), np.uint8)
        elif frames.shape[1:] != self.frames.shape[1:]:
            raise RayappError(f"{self.name} buffer holds frames of {self.frames.shape[1:]}, got {frames.shape[1:]}")
        if not self.evict and self.written + n > self.capacity:
            raise BufferFull(
                f"the {self.name} buffer holds {self.capacity:,} frames (one per step, one more per episode) "
                f"and {self.written:,} are in it: {n:,} more do not fit"
            )
        g = np.arange(self.written, self.written + n)
        slots = g % self.capacity
        if self.written + n > self.capacity:  # overwrite the oldest: they can no longer be drawn
            old = self.gidx[slots]
            gone = old[(old >= 0) & (self.next[slots] >= 0)]
            self.transitions -= len(gone)
            self.tree.set(slots, 0.0)
        self.frames[slots] = frames
        self.gidx[slots] = g
        self.prev[slots] = -1
        self.next[slots] = -1
        self.terminal[slots] = False
        self.life_end[slots] = False
        self.written += n
        return g

    def extend(
        self,
        key: Any,
        frames: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: bool = False,
        done: bool = True,
        history: np.ndarray | None = None,
        life_end: np.ndarray | None = None,
    ) -> int:
        """Append observations `frames` (n, c, h, w) of episode `key` and the n-1 (or, continuing
        an open episode whose newest observation is `frames[0]`, n-1 as well) actions/rewards
        between them. `history`: frames before `frames[0]` (a fragment whose start was never seen),
        kept for stacking only. `done` closes the episode; `terminated` marks its end game over.
        `life_end` (n-1 bools, optional): the transitions that lose a life. Returns the number of
        new transitions."""
        actions = np.asarray(actions, np.int64)
        rewards = np.asarray(rewards, np.float32)
        if len(actions) != len(frames) - 1 or len(rewards) != len(actions):
            raise RayappError(f"{len(frames)} observations need {len(frames) - 1} actions and rewards")
        if life_end is not None and len(life_end) != len(actions):
            raise RayappError(f"{len(actions)} transitions need {len(actions)} life-end flags, got {len(life_end)}")
        last = self.open.pop(key, None)
        if last is not None and self._valid(np.array([last]))[0]:
            chain = np.concatenate([[last], self._write_frames(frames[1:])])
        else:
            head = self._write_frames(history) if history is not None and len(history) else np.zeros(0, np.int64)
            chain = np.concatenate([head, self._write_frames(frames)])
            if len(head):
                s = chain % self.capacity
                self.prev[s[1 : len(head) + 1]] = chain[: len(head)]
                self.next[s[: len(head)]] = -1  # history frames are never drawn
            chain = chain[len(head) :]
        s = chain % self.capacity
        self.prev[s[1:]] = chain[:-1]
        self.next[s[:-1]] = chain[1:]
        self.action[s[:-1]] = actions
        self.reward[s[:-1]] = rewards
        if life_end is not None:
            self.life_end[s[:-1]] = np.asarray(life_end, bool)
        self.terminal[s[-1]] = bool(terminated and done)
        self.tree.set(s[:-1], self.max_priority**self.alpha)
        self.transitions += len(actions)
        if not done:
            self.open[key] = int(chain[-1])
        return len(actions)

    # ---- reading ---------------------------------------------------------------------------------
    def stack(self, g: np.ndarray, k: int) -> np.ndarray:
        """The k-frame observations at global indices g: (len(g), k*c, h, w)."""
        idx = np.empty((len(g), k), np.int64)
        idx[:, -1] = g
        for j in range(k - 2, -1, -1):
            p = self.prev[idx[:, j + 1] % self.capacity]
            idx[:, j] = np.where(self._valid(p), p, idx[:, j + 1])
        out = self.frames[idx % self.capacity]  # (B, k, c, h, w)
        return out.reshape(len(g), -1, *out.shape[3:])

    def returns(self, g: np.ndarray, n: int, gamma: float) -> dict[str, np.ndarray]:
        """n-step discounted returns from g, cut at the episode's end or a lost life: (return,
        steps, end index, no bootstrap from the end)."""
        ret = np.zeros(len(g), np.float64)
        steps = np.zeros(len(g), np.int64)
        cur = g.copy()
        stopped = np.zeros(len(g), bool)
        cut = np.zeros(len(g), bool)
        for i in range(n):
            s = cur % self.capacity
            nxt = self.next[s]
            go = ~stopped & (nxt >= 0)
            ret += np.where(go, gamma**i * self.reward[s], 0.0)
            cut |= go & self.life_end[s]
            cur = np.where(go, nxt, cur)
            steps += go
            s = cur % self.capacity
            stopped |= self.terminal[s] | (self.next[s] < 0) | cut
        return {"return": ret, "steps": steps, "end": cur, "terminal": self.terminal[cur % self.capacity] | cut}

    def sample(self, n: int, rng: np.random.Generator, beta: float) -> tuple[np.ndarray, np.ndarray]:
        """n global indices drawn by priority, and their importance-sampling weights (N P(i))^-beta
        (not yet normalised: the caller divides by the batch's largest, as Dopamine does)."""
        slots = self.tree.sample(n, rng)
        p = self.tree.get(slots) / self.tree.total
        return self.gidx[slots], (self.transitions * p) ** -beta

    def update_priorities(self, g: np.ndarray, td: np.ndarray, action_weight: np.ndarray | None = None) -> None:
        """Priorities ((|td| + eps) * action_weight[action])^alpha for the drawn indices that still
        hold their data."""
        g = np.asarray(g, np.int64)
        s = g % self.capacity
        keep = (self.gidx[s] == g) & (self.next[s] >= 0)
        p = np.abs(np.asarray(td, np.float64)[keep]) + self.eps
        if action_weight is not None:
            p = p * action_weight[self.action[s[keep]]]
        if len(p):
            self.max_priority = max(self.max_priority, float(p.max()))
            self.tree.set(s[keep], p**self.alpha)

    # ---- size and state --------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        arrays = (self.action, self.reward, self.prev, self.next, self.terminal, self.life_end, self.gidx, self.tree.tree)
        return (0 if self.frames is None else self.frames.nbytes) + sum(a.nbytes for a in arrays)

    def fingerprint(self) -> list[int]:
        used = min(self.written, self.capacity)
        return [self.written, int(self.action[:used].sum()), self.transitions]

    def get_state(self, data: bool = True) -> dict[str, Any]:
        """Priorities always; with `data`, everything else (the online ring)."""
        used = min(self.written, self.capacity)
        state: dict[str, Any] = {
            "priorities": self.tree.get(np.arange(used)).copy(),
            "max_priority": self.max_priority,
            "fingerprint": self.fingerprint(),
        }
        if data:
            state.update(
                written=self.written, transitions=self.transitions, open=dict(self.open),
                frames=None if self.frames is None else self.frames[:used].copy(),
                **{k: getattr(self, k)[:used].copy() for k in ("action", "reward", "prev", "next", "terminal", "life_end", "gidx")},
            )  # fmt: skip
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        if "frames" in state:
            used = len(state["gidx"])
            if used > self.capacity:
                raise RayappError(f"the saved {self.name} buffer holds {used:,} slots, more than its capacity {self.capacity:,}")
            if state["frames"] is not None:
                self.frames = np.empty((self.capacity, *state["frames"].shape[1:]), np.uint8)
                self.frames[:used] = state["frames"]
            for k in ("action", "reward", "prev", "next", "terminal", "gidx"):
                getattr(self, k)[:used] = state[k]
            # checkpoints from before life-loss terminals have no flags: no lives were lost in them
            self.life_end[:used] = state["life_end"] if "life_end" in state else False
            self.written, self.transitions = int(state["written"]), int(state["transitions"])
            self.open = dict(state["open"])
        elif list(state["fingerprint"]) != self.fingerprint():
            raise RayappError(
                f"the saved {self.name} priorities belong to other data (steps, action sum, transitions "
                f"{state['fingerprint']} vs {self.fingerprint()} now): were the demonstrations changed?"
            )
        pr = np.asarray(state["priorities"], np.float64)
        self.tree = SumTree(self.capacity)
        self.tree.set(np.arange(len(pr)), pr)
        self.max_priority = float(state["max_priority"])
