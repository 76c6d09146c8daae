"""The ingest benchmark's PyTorch baseline: a DataLoader over the same read tasks as Ray Data.

What a PyTorch engineer would write for this workload (and what was measured to matter here):
  - an IterableDataset whose workers split the read tasks between them and build whole batches
    themselves (`batch_size=None`: no per-sample collate in the main process);
  - one thread per worker for torch and OpenCV (2 workers on 2 cores: no oversubscription);
  - a vectorised shuffle buffer (`ShuffleBuffer`): blocks go in and batches come out by fancy
    indexing, not one sample at a time in Python;
  - batches written straight into shared memory (`shared_empty`), so handing a batch to the main
    process sends a file descriptor instead of copying 7 MB into a new shared segment;
  - persistent workers, `prefetch_factor=4`, and `in_order=False` (no worker waits for the other's
    turn; batch order across workers does not matter to a shuffled training stream).

This module imports neither Ray nor the benchmark: the unit tests import it directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

Batch = dict[str, np.ndarray]
# (shape, dtype) -> (a numpy array to write into, the object emitted for it: itself or a tensor)
Alloc = Callable[[tuple[int, ...], np.dtype], tuple[np.ndarray, Any]]


def numpy_empty(shape: tuple[int, ...], dtype) -> tuple[np.ndarray, np.ndarray]:
    a = np.empty(shape, dtype)
    return a, a


def shared_empty(shape: tuple[int, ...], dtype) -> tuple[np.ndarray, Any]:
    """A new torch tensor in shared memory and a numpy view of it: a DataLoader worker that returns
    the tensor sends only a handle to the main process. (`torch.from_numpy(view)` would not do:
    torch does not see it as shared and copies it into a new segment when it is sent.)"""
    import torch

    t = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype).share_memory_()
    return t.numpy(), t


class ShuffleBuffer:
    """A random-replacement shuffle buffer of `size` samples that emits batches of `batch_size`.

    `add(block)` takes a block of samples (a dict of arrays with equal first dimensions) and
    yields every batch that became full; `flush()` yields the rest of the epoch (the buffer in
    random order, completing the batch being built). While the buffer fills, samples are
    appended; once it is full, each incoming sample takes the slot of a sample drawn uniformly
    from the buffer, which goes into the batch being built. Slots are drawn without replacement
    within one chunk (the samples that complete the current batch), so a chunk is one gather and
    one scatter per column. Every sample added comes out exactly once, in batches of exactly
    `batch_size` but the epoch's last. `size=0` only re-batches (in order).

    Output batches are fresh arrays from `alloc` (tensors in shared memory in a DataLoader
    worker), owned by the caller.
    """

    def __init__(self, size: int, batch_size: int, rng: np.random.Generator, alloc: Alloc = numpy_empty):
        if batch_size < 1 or size < 0:
            raise ValueError(
                f"ShuffleBuffer: batch_size must be >= 1 and size >= 0, got {batch_size}, {size}"
            )
        self.size, self.batch_size, self.rng, self.alloc = size, batch_size, rng, alloc
        self.buf: Batch | None = None
        self.fill = 0  # samples in the buffer
        self.out: Batch | None = None  # the batch being built (arrays written into)
        self.emit: dict[str, Any] | None = None  # the same batch as emitted (arrays or tensors)
        self.pending = 0  # samples in the batch being built

    def _room(self, like: Batch) -> int:
        """Samples still missing from the batch being built (a new one if none)."""
        if self.out is None:
            pairs = {k: self.alloc((self.batch_size, *v.shape[1:]), v.dtype) for k, v in like.items()}
            self.out = {k: p[0] for k, p in pairs.items()}
            self.emit = {k: p[1] for k, p in pairs.items()}
            self.pending = 0
        return self.batch_size - self.pending

    def _take(self) -> dict[str, Any]:
        n = self.pending
        out = self.emit if n == self.batch_size else {k: v[:n] for k, v in self.emit.items()}
        self.out = self.emit = None
        self.pending = 0
        return out

    def add(self, block: Batch) -> Iterator[dict[str, Any]]:
        n = len(next(iter(block.values())))
        i = 0
        if self.size and self.buf is None:
            self.buf = {k: np.empty((self.size, *v.shape[1:]), v.dtype) for k, v in block.items()}
        if self.size and self.fill < self.size:  # filling: append
            i = min(n, self.size - self.fill)
            for k, v in block.items():
                self.buf[k][self.fill : self.fill + i] = v[:i]
            self.fill += i
        while i < n:
            m = min(n - i, self._room(block))
            dst = slice(self.pending, self.pending + m)
            if self.size:  # swap the chunk with m distinct random residents
                slots = self.rng.choice(self.size, m, replace=False)
                for k, v in block.items():
                    np.take(self.buf[k], slots, axis=0, out=self.out[k][dst])
                    self.buf[k][slots] = v[i : i + m]
            else:
                for k, v in block.items():
                    self.out[k][dst] = v[i : i + m]
            self.pending += m
            i += m
            if self.pending == self.batch_size:
                yield self._take()

    def flush(self) -> Iterator[dict[str, Any]]:
        """The rest of the epoch: the buffer's samples in random order, then the last batch."""
        rest = self.rng.permutation(self.fill)
        i = 0
        while i < len(rest):
            m = min(len(rest) - i, self._room(self.buf))
            for k, v in self.buf.items():
                np.take(v, rest[i : i + m], axis=0, out=self.out[k][self.pending : self.pending + m])
            self.pending += m
            i += m
            if self.pending == self.batch_size:
                yield self._take()
        if self.pending:
            yield self._take()
        self.fill = 0


def worker_init(_worker_id: int) -> None:
    """One thread per worker process for torch and OpenCV."""
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def stream_epoch(
    blocks: Iterator[Batch], shuffle_buffer: int, batch_size: int, rng: np.random.Generator, alloc: Alloc
) -> Iterator[Batch]:
    """Blocks of samples -> batches through a `ShuffleBuffer`."""
    buf = ShuffleBuffer(shuffle_buffer, batch_size, rng, alloc)
    for b in blocks:
        yield from buf.add(b)
    yield from buf.flush()


def make_loader(spec, tasks, shuffle_buffer: int, batch_size: int, workers: int = 2, seed: int = 0):
    """The DataLoader arm: `workers` processes, each reading its share of `tasks` (a new order per
    epoch) with `read_samples` and shuffling them through its own buffer of `shuffle_buffer`."""
    from torch.utils.data import DataLoader

    return DataLoader(
        TaskStream(spec, tasks, shuffle_buffer, batch_size, seed),
        batch_size=None,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
        worker_init_fn=worker_init,
        in_order=False,
    )


def _iterable_base():
    from torch.utils.data import IterableDataset

    return IterableDataset


class TaskStream(_iterable_base()):
    """The read tasks split across DataLoader workers (task i to worker i mod n), read with
    `read_samples`, batched in the worker through a `ShuffleBuffer`; yields dicts of tensors."""

    def __init__(self, spec, tasks, shuffle_buffer: int, batch_size: int, seed: int = 0):
        self.spec, self.tasks, self.shuffle_buffer, self.batch_size = spec, tasks, shuffle_buffer, batch_size
        self.seed, self.epoch = seed, 0  # each persistent worker counts its own epochs

    def __iter__(self):
        import torch
        from torch.utils.data import get_worker_info

        from rayapp.data.samples import read_samples

        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        self.epoch += 1
        rng = np.random.default_rng([self.seed, wid, self.epoch])
        mine = [t for i, t in enumerate(self.tasks) if i % nw == wid]
        rng.shuffle(mine)
        alloc = shared_empty if info else numpy_empty
        blocks = (b for task in mine for b in read_samples(self.spec, task, self.epoch))
        for batch in stream_epoch(blocks, self.shuffle_buffer, self.batch_size, rng, alloc):
            yield {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(v) for k, v in batch.items()}
