"""Turn a run of row groups into training samples: decode, preprocess, stack, filter, balance.

A read task owns a contiguous run of row groups of one writer's stream. It also reads the tail of
the group before its run (context: the k-1 frames that the first frame stacks need) and, in clip
mode, the head of the group after it (lookahead: the rest of a clip that starts inside the run).
So frame stacks are exact at row group, task and shard boundaries, and never cross an episode
boundary: the first frames of an episode are padded with its first frame (as gymnasium's
FrameStackObservation pads with the reset observation). A jump in `step` inside one episode (a
shard lost to corruption) is treated like an episode boundary.

Reads that fail transiently (storage unreachable, 5xx) are retried with backoff a bounded number
of times (`rayapp.storage.retry_io`); the last failure is a StorageError naming the shard.

This module does not import Ray: the Ray Data datasource and the benchmark's PyTorch DataLoader
both call `read_samples`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayapp.frames import FrameSpec, Preprocessor
from rayapp.replay.schema import ObservationSpec, decode_frames, frames_view
from rayapp.storage import retry_io

__all__ = ["ReadSpec", "TaskSpec", "read_samples", "stack_indices", "clip_positions"]


@dataclass(frozen=True)
class TaskSpec:
    """Row groups in stream order, each (path, group, role); role: 'context', 'own' or 'lookahead'."""

    task_id: int
    groups: tuple[tuple[str, int, str], ...]
    rows: int  # owned rows of the wanted split (before resampling)


@dataclass(frozen=True)
class ReadSpec:
    """What every read task of one dataset split shares."""

    filesystem: pafs.FileSystem
    obs: ObservationSpec
    frames: FrameSpec
    label_columns: tuple[str, ...]  # columns read as labels
    output_columns: tuple[str, ...]  # their names in the samples ("action" or "action_<control>")
    episode_split: dict[str, str]
    split: str | None = None  # None: every episode
    clip_length: int = 0
    rates: np.ndarray | None = None  # resample: expected copies of a step, per class of the first label
    shuffle: bool = False
    seed: int = 0
    include_ids: bool = False  # also emit episode_id and step (tests, debugging)
    block_rows: int = 1024
    extra_columns: tuple[str, ...] = field(default=())
    uri_prefix: str = ""  # what turns a filesystem path into the URI users know ("s3://"; "" locally)
    # frame pairs (the latent action model): only rows with a previous frame in the same episode, so
    # a 2-frame stack is a real (frame t, frame t+1) pair and never padding across an episode start
    pairs: bool = False


def stack_indices(segment_start: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """(len(rows), k) indices of the frames stacked for each row: the row and the k-1 before it,
    clamped to the first row of the row's segment (episode)."""
    offs = np.arange(-(k - 1), 1)
    return np.maximum(rows[:, None] + offs[None, :], segment_start[rows][:, None])


def clip_positions(
    starts: np.ndarray, seg_id: np.ndarray, clip_start: np.ndarray, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of each clip (len(starts), length) and the mask of real steps (a clip stops at the end
    of its segment or where the next clip starts; the rest is padding)."""
    n = len(seg_id)
    pos = starts[:, None] + np.arange(length)[None, :]
    inside = pos < n
    safe = np.minimum(pos, n - 1)
    same = inside & (seg_id[safe] == seg_id[starts][:, None])
    not_next = np.ones_like(same)
    not_next[:, 1:] = ~clip_start[safe[:, 1:]]
    mask = np.cumprod(same & not_next, axis=1).astype(bool)
    return np.where(mask, safe, starts[:, None]), mask


def _open(fs: pafs.FileSystem, path: str, cache: dict) -> pq.ParquetFile:
    pf = cache.get(path)
    if pf is None:
        pf = pq.ParquetFile(fs.open_input_file(path))
        cache[path] = pf
    return pf


def _read_group(
    spec: ReadSpec, path: str, group: int, cols: list[str], files: dict, retryable: Iterable[str]
):
    def read():
        try:
            return _open(spec.filesystem, path, files).read_row_group(group, columns=cols)
        except OSError:
            files.pop(path, None)  # reopen on the next attempt
            raise

    return retry_io(read, f"{spec.uri_prefix}{path} (row group {group})", retryable)


def read_samples(
    spec: ReadSpec, task: TaskSpec, epoch: int = 0, retryable: Iterable[str] = ()
) -> Iterator[dict[str, np.ndarray]]:
    """Yield batches (dicts of numpy arrays) of the task's samples; `retryable`: more error
    substrings worth a retry (Ray Data's `DataContext.retried_io_errors`)."""
    pre = Preprocessor(spec.frames, spec.obs.shape)
    k = spec.frames.frame_stack
    L = spec.clip_length
    cols = ["episode_id", "step", "obs", *spec.label_columns, *spec.extra_columns]
    files: dict[str, pq.ParquetFile] = {}
    frames, eps, steps, labels, owned = [], [], [], [], []
    for path, group, role in task.groups:
        t = _read_group(spec, path, group, cols, files, retryable)
        if role == "context":
            t = t.slice(max(0, t.num_rows - max(k - 1, 1 if L else 0)))
        elif role == "lookahead":
            t = t.slice(0, max(0, L - 1))
        if t.num_rows == 0:
            continue
        raw = frames_view(t.column("obs"), spec.obs)
        if raw is None:
            raw = decode_frames(t.column("obs"), spec.obs)
        frames.append(pre(raw))
        eps.append(t.column("episode_id").to_numpy(zero_copy_only=False))
        steps.append(t.column("step").to_numpy())
        # latent_action is null on an episode's last step (no next frame): -1, dropped below
        labels.append(
            [t.column(c).fill_null(-1 if c == "latent_action" else 0).to_numpy().astype(np.int64)
             for c in spec.label_columns]
        )  # fmt: skip
        owned.append(np.full(t.num_rows, role == "own"))
        del t, raw
    if not frames:
        return
    f = np.concatenate(frames) if len(frames) > 1 else frames[0]
    ep = np.concatenate(eps)
    step = np.concatenate(steps)
    lab = [np.concatenate([x[i] for x in labels]) for i in range(len(spec.label_columns))]
    own = np.concatenate(owned)
    n = len(ep)
    new = np.ones(n, bool)
    new[1:] = (ep[1:] != ep[:-1]) | (step[1:] != step[:-1] + 1)
    seg_id = np.cumsum(new) - 1
    seg_first = np.flatnonzero(new)
    seg_start = seg_first[seg_id]
    if spec.split is not None:
        names, codes = np.unique(ep, return_inverse=True)
        keep_name = np.array([spec.episode_split.get(e) == spec.split for e in names], bool)
        in_split = keep_name[codes]
    else:
        in_split = np.ones(n, bool)
    rng = np.random.default_rng([spec.seed, epoch, task.task_id])
    if L:
        is_start = new | (step % L == 0)
        rows = np.flatnonzero(is_start & own & in_split)
    else:
        rows = np.flatnonzero(own & in_split)
    if spec.pairs:
        rows = rows[seg_start[rows] != rows]
    if lab and spec.label_columns[0] == "latent_action":
        rows = rows[lab[0][rows] >= 0]
    if spec.rates is not None and len(rows):
        copies = rng.poisson(spec.rates[lab[0][rows]])
        rows = np.repeat(rows, copies)
    if spec.shuffle:
        rows = rng.permutation(rows)
    c, h, w = pre.out_shape
    per_block = max(1, spec.block_rows // max(1, L)) if L else spec.block_rows
    for s in range(0, len(rows), per_block):
        r = rows[s : s + per_block]
        if L:
            pos, mask = clip_positions(r, seg_id, is_start, L)
            if lab and spec.label_columns[0] == "latent_action":
                mask &= lab[0][pos] >= 0  # an episode's last step has no latent action: not a target
            idx = stack_indices(seg_start, pos.reshape(-1), k)
            obs = f[idx].reshape(len(r), L, k * c, h, w)
            out = {"obs": obs, "mask": mask}
            for name, y in zip(spec.output_columns, lab):
                out[name] = np.where(mask, y[pos], 0)
            if spec.include_ids:
                out["episode_id"] = ep[r].astype(str)
                out["step"] = np.where(mask, step[pos], -1)
        else:
            idx = stack_indices(seg_start, r, k)
            out = {"obs": f[idx].reshape(len(r), k * c, h, w)}
            at = r - 1 if spec.pairs else r  # a pair (t, t+1) is labelled with the action taken at t
            for name, y in zip(spec.output_columns, lab):
                out[name] = y[at]
            if spec.include_ids:
                out["episode_id"] = ep[r].astype(str)
                out["step"] = step[r]
                out["stack_steps"] = step[idx]
        yield out
