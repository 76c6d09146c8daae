"""A sum tree over a fixed number of slots, vectorised with numpy: set many priorities at once,
draw many indices proportionally to them at once (prioritized replay, Schaul et al. 2016).

Leaves hold the priorities (0: never drawn); every inner node holds the sum of its two children,
so the total is `tree[1]` and a draw descends log2(capacity) levels for the whole batch together.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SumTree"]


class SumTree:
    def __init__(self, capacity: int):
        self.size = 1
        while self.size < max(1, capacity):
            self.size *= 2
        self.capacity = int(capacity)
        self.tree = np.zeros(2 * self.size, np.float64)

    @property
    def total(self) -> float:
        return float(self.tree[1])

    def get(self, idx: np.ndarray) -> np.ndarray:
        return self.tree[self.size + np.asarray(idx, np.int64)]

    def set(self, idx: np.ndarray, values: np.ndarray) -> None:
        idx = np.asarray(idx, np.int64).ravel()
        if idx.size == 0:
            return
        values = np.broadcast_to(np.asarray(values, np.float64), idx.shape)
        if np.any(values < 0) or not np.all(np.isfinite(values)):
            raise ValueError("priorities must be finite and >= 0")
        nodes = self.size + idx
        self.tree[nodes] = values  # a repeated index keeps its last value, as a loop would
        nodes = np.unique(nodes // 2)
        while nodes[0] >= 1:
            self.tree[nodes] = self.tree[2 * nodes] + self.tree[2 * nodes + 1]
            if nodes[0] == 1:
                break
            nodes = np.unique(nodes // 2)

    def find(self, mass: np.ndarray) -> np.ndarray:
        """The leaf index where each prefix sum `mass` (in [0, total)) falls."""
        mass = np.array(mass, np.float64, copy=True)
        nodes = np.ones(mass.shape, np.int64)
        while nodes[0] < self.size if nodes.size else False:
            left = 2 * nodes
            go_right = mass >= self.tree[left]
            mass = np.where(go_right, mass - self.tree[left], mass)
            nodes = np.where(go_right, left + 1, left)
        leaves = nodes - self.size
        # floating-point slack at the right edge can land on an empty leaf: step back to a full one
        empty = self.tree[nodes] <= 0
        if np.any(empty):
            full = np.flatnonzero(self.tree[self.size : self.size + self.capacity] > 0)
            pos = np.searchsorted(full, leaves[empty], side="right") - 1
            leaves[empty] = full[np.clip(pos, 0, len(full) - 1)]
        return leaves

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` leaves drawn with probability priority / total (stratified, as PER does)."""
        if self.total <= 0:
            raise ValueError("nothing to sample: all priorities are 0")
        edges = (np.arange(n) + rng.random(n)) * (self.total / n)
        return self.find(np.minimum(edges, np.nextafter(self.total, 0)))
