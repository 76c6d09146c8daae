"""The ingest benchmark's DataLoader baseline (benchmarks/ingest_baseline.py): its vectorised
shuffle buffer delivers every sample exactly once, in shuffled order, in batches of the right
shape; through a real DataLoader with 2 workers over recorded Breakout it delivers the same
samples as `read_samples`, in shared-memory tensors."""

import os
import sys
from collections import Counter

import numpy as np
import pytest
from test_data import _cfg, spanning  # noqa: F401 (a fixture: real Breakout episodes)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from ingest_baseline import ShuffleBuffer, make_loader, stream_epoch  # noqa: E402

from rayapp.data import build_ingest  # noqa: E402
from rayapp.data.samples import read_samples  # noqa: E402

SHAPE = (2, 3, 5)


def _blocks(n: int, sizes: list[int]):
    """Blocks of samples whose obs are filled with the sample's id and whose action is the id."""
    ids = np.arange(n)
    starts = np.cumsum([0, *sizes])
    assert starts[-1] == n
    for a, b in zip(starts[:-1], starts[1:]):
        i = ids[a:b]
        obs = np.empty((len(i), *SHAPE), np.uint8)
        obs[:] = (i % 251)[:, None, None, None]
        yield {"obs": obs, "action": i.astype(np.int64)}


def _epoch(n, sizes, size, batch=64, seed=0):
    return list(stream_epoch(_blocks(n, sizes), size, batch, np.random.default_rng(seed), _alloc))


def _alloc(shapes):
    out = {
        k: np.full(shape, 255 if np.dtype(dtype) == np.uint8 else -1, dtype)
        for k, (shape, dtype) in shapes.items()
    }
    return out, out  # filled with garbage, which would show up


@pytest.mark.parametrize(
    "n,sizes,size",
    [
        (5000, [1024] * 4 + [904], 1000),  # steady state: the buffer fills, then swaps
        (5000, [37, 1024, 1, 513, 2000, 1425], 777),  # ragged blocks, chunks across batches
        (700, [300, 400], 1000),  # the buffer never fills: everything comes from the flush
        (1000, [1000], 1000),  # exactly full
        (5000, [1024] * 4 + [904], 0),  # no buffer: re-batching only
    ],
)
def test_shuffle_buffer_delivers_every_sample_once_in_batches(n, sizes, size):
    batches = _epoch(n, sizes, size)
    assert [len(b["obs"]) for b in batches[:-1]] == [64] * (len(batches) - 1), "full batches"
    assert 1 <= len(batches[-1]["obs"]) <= 64
    assert sum(len(b["obs"]) for b in batches) == n
    for b in batches:
        assert b["obs"].shape[1:] == SHAPE and b["obs"].dtype == np.uint8 and b["action"].dtype == np.int64
        # obs and action of one sample stay together
        assert (b["obs"] == (b["action"] % 251)[:, None, None, None]).all()
    ids = np.concatenate([b["action"] for b in batches])
    assert sorted(ids.tolist()) == list(range(n)), "every sample exactly once"
    if size:
        assert not np.array_equal(ids, np.arange(n)), "order shuffled"
        assert np.mean(ids == np.arange(n)) < 0.05
        assert (np.diff(ids) == 1).mean() < 0.05, "consecutive samples are split up"
    else:
        assert np.array_equal(ids, np.arange(n)), "no buffer keeps the order"


def test_shuffle_buffer_mixes_across_the_whole_buffer():
    # a buffer larger than the data is a full random permutation: no correlation with input order
    ids = np.concatenate([b["action"] for b in _epoch(4000, [1000] * 4, 10_000)])
    assert abs(np.corrcoef(ids, np.arange(4000))[0, 1]) < 0.1
    # a smaller buffer: once full, the i-th arrival pushes out the (i - size)-th output; a sample
    # leaves after a geometric wait of mean `size` outputs
    ids = np.concatenate([b["action"] for b in _epoch(20_000, [1000] * 20, 500)])
    pos = np.empty(20_000)
    pos[ids] = np.arange(20_000)
    wait = (pos - (np.arange(20_000) - 500))[1000:15_000]  # steady state, away from the final flush
    assert (wait >= 0).all() and 450 < wait.mean() < 550 and wait.max() > 2000
    # seeds matter, and one seed reproduces
    a, b, c = (
        np.concatenate([x["action"] for x in _epoch(3000, [1000] * 3, 800, seed=s)]) for s in (1, 1, 2)
    )
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_shuffle_buffer_rejects_bad_sizes():
    with pytest.raises(ValueError, match="batch_size"):
        ShuffleBuffer(10, 0, np.random.default_rng(0))


@pytest.mark.parametrize("shuffle_buffer", [0, 500])
def test_dataloader_baseline_delivers_the_samples_of_read_samples(spanning, shuffle_buffer):  # noqa: F811
    import torch

    uri, _ = spanning
    ingest = build_ingest(_cfg(uri, "data.val_fraction=0", "data.test_fraction=0"))
    spec, tasks = ingest.read_spec(None, train=True), ingest.tasks(None)
    assert len(tasks) > 4
    loader = make_loader(spec, tasks, shuffle_buffer, 32, workers=2)
    for i, _ in enumerate(loader):  # an epoch left early frees its slots (or the next would hang)
        if i == 2:
            break
    for epoch in (2, 3):  # persistent workers: later epochs deliver everything again
        want = Counter()
        for t in tasks:
            for b in read_samples(spec, t, epoch):
                want.update(o.tobytes() + bytes([a]) for o, a in zip(b["obs"], b["action"]))
        got, sizes = Counter(), []
        for b in loader:
            assert isinstance(b["obs"], torch.Tensor) and b["obs"].dtype == torch.uint8
            assert b["obs"].shape[1:] == (4, 84, 84) and b["action"].shape == b["obs"].shape[:1]
            assert b["obs"].is_shared(), "batches come in shared memory from the workers"
            sizes.append(len(b["obs"]))
            got.update(o.numpy().tobytes() + bytes([int(a)]) for o, a in zip(b["obs"], b["action"]))
        assert got == want, "every sample exactly once per epoch"
        assert sum(s < 32 for s in sizes) <= 2, "full batches except each worker's last"
