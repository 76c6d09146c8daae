"""The ingest benchmark's PyTorch baseline: a DataLoader over the same read tasks as Ray Data.

What a PyTorch engineer would write for this workload (and what was measured to matter here):
  - an IterableDataset whose workers split the read tasks between them and build whole batches
    themselves (`batch_size=None`: no per-sample collate in the main process);
  - one thread per worker for torch and OpenCV (2 workers on 2 cores: no oversubscription);
  - a vectorised shuffle buffer (`ShuffleBuffer`): blocks go in and batches come out by fancy
    indexing, not one sample at a time in Python;
  - batches written straight into preallocated slots of shared memory (`SlotRing`), reused: a
    batch crosses to the main process as a file descriptor of a segment both processes have
    mapped already. (A fresh shared segment per batch, which is what returning new tensors does,
    costs a segment creation and 1,800 page faults on each side for every 7 MB batch: about as
    much CPU as the decode.) A batch stays valid until the next one is asked for;
  - persistent workers, `prefetch_factor=4`, and `in_order=False` (no worker waits for the other's
    turn; batch order across workers does not matter to a shuffled training stream).

This module imports neither Ray nor the benchmark: the unit tests import it directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

Batch = dict[str, np.ndarray]
Shapes = dict[str, tuple[tuple[int, ...], np.dtype]]
# a batch's {key: (shape, dtype)} -> (arrays to write into, what is emitted: the same or tensors)
Alloc = Callable[[Shapes], tuple[Batch, dict[str, Any]]]
RELEASE = "_release"  # the emitted batch's key for its slot (SlotRing)


def numpy_batch(shapes: Shapes) -> tuple[Batch, Batch]:
    out = {k: np.empty(shape, dtype) for k, (shape, dtype) in shapes.items()}
    return out, out


class SlotRing:
    """Batch slots in shared memory, allocated once per worker and reused round-robin.

    A slot is busy from the moment the worker takes it until the main process releases it (the
    `SlotLoader` wrapper does that when the next batch is asked for) or the worker starts a new
    epoch (then the DataLoader has dropped every batch of the last one). A worker that comes round to
    a busy slot waits for it; `slots` above the batches in flight (prefetch_factor x workers)
    plus the one in use means it never has to."""

    def __init__(self, slots: int, timeout_s: float = 120.0):
        self.busy = torch.zeros(slots, dtype=torch.uint8).share_memory_()
        self.slots: list[tuple[Shapes, Batch, dict[str, torch.Tensor]] | None] = [None] * slots
        self.next, self.timeout_s = 0, timeout_s

    def __call__(self, shapes: Shapes) -> tuple[Batch, dict[str, Any]]:
        s = self.next
        self.next = (s + 1) % len(self.slots)
        t0 = time.monotonic()
        while self.busy[s]:
            if time.monotonic() - t0 > self.timeout_s:
                raise RuntimeError(f"SlotRing: slot {s} not released for {self.timeout_s} s (consumer gone?)")
            time.sleep(0.0005)
        if self.slots[s] is None or self.slots[s][0] != shapes:
            ts = {
                k: torch.empty(shape, dtype=_torch_dtype(dtype)).share_memory_()
                for k, (shape, dtype) in shapes.items()
            }
            self.slots[s] = (shapes, {k: t.numpy() for k, t in ts.items()}, ts)
        self.busy[s] = 1
        _, arrays, ts = self.slots[s]
        return arrays, {**ts, RELEASE: (self.busy, s)}


def _torch_dtype(dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype)).dtype


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

    Output batches come from `alloc` (fresh arrays by default; slots of a `SlotRing` in a
    DataLoader worker); keys that `alloc` adds are passed through.
    """

    def __init__(self, size: int, batch_size: int, rng: np.random.Generator, alloc: Alloc = numpy_batch):
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
            self.out, self.emit = self.alloc(
                {k: ((self.batch_size, *v.shape[1:]), v.dtype) for k, v in like.items()}
            )
            self.pending = 0
        return self.batch_size - self.pending

    def _take(self) -> dict[str, Any]:
        n = self.pending
        out = (
            self.emit
            if n == self.batch_size
            else {k: v[:n] if k in self.out else v for k, v in self.emit.items()}
        )
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


class SlotLoader:
    """Iterates a DataLoader of `SlotRing` batches: releases each batch's slot when the next batch
    is asked for, and keeps every slot's tensors referenced so that torch maps
    each shared segment once (its cache of received storages is weak)."""

    def __init__(self, loader: DataLoader):
        self.loader = loader
        self._keep: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    def __iter__(self):
        prev = None
        for b in self.loader:
            if prev is not None:
                prev[0][prev[1]] = 0
            busy, s = prev = b.pop(RELEASE)
            self._keep[(busy.data_ptr(), s)] = b
            yield b
        # the last batch's slot, and those of batches dropped when an epoch is left early, are
        # freed by their worker when the next epoch starts (the DataLoader drains them first)


def make_loader(
    spec, tasks, shuffle_buffer: int, batch_size: int, workers: int = 2, seed: int = 0
) -> SlotLoader:
    """The DataLoader arm: `workers` processes, each reading its share of `tasks` (a new order per
    epoch) with `read_samples` and shuffling them through its own buffer of `shuffle_buffer`."""
    prefetch = 4
    loader = DataLoader(
        TaskStream(spec, tasks, shuffle_buffer, batch_size, seed, slots=prefetch * workers + 2),
        batch_size=None,
        num_workers=workers,
        persistent_workers=True,
        prefetch_factor=prefetch,
        worker_init_fn=worker_init,
        in_order=False,
    )
    return SlotLoader(loader)


class TaskStream(IterableDataset):
    """The read tasks split across DataLoader workers (task i to worker i mod n), read with
    `read_samples`, batched in the worker through a `ShuffleBuffer` into a `SlotRing` of `slots`
    (in a worker; fresh arrays in the main process); yields dicts of tensors."""

    def __init__(self, spec, tasks, shuffle_buffer: int, batch_size: int, seed: int = 0, slots: int = 10):
        self.spec, self.tasks, self.shuffle_buffer, self.batch_size = spec, tasks, shuffle_buffer, batch_size
        self.seed, self.slots, self.epoch, self.ring = seed, slots, 0, None  # per worker process

    def __iter__(self):
        from rayapp.data.samples import read_samples

        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        self.epoch += 1
        if info and self.ring is None:
            self.ring = SlotRing(self.slots)
        elif self.ring is not None:  # a new epoch: the main process holds none of our batches now
            self.ring.busy.zero_()
        rng = np.random.default_rng([self.seed, wid, self.epoch])
        mine = [t for i, t in enumerate(self.tasks) if i % nw == wid]
        rng.shuffle(mine)
        blocks = (b for task in mine for b in read_samples(self.spec, task, self.epoch))
        for batch in stream_epoch(
            blocks, self.shuffle_buffer, self.batch_size, rng, self.ring or numpy_batch
        ):
            yield {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}
