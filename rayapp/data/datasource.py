"""`ReplayDatasource`: the replay shards as a Ray Data datasource of training samples.

Why not `read_parquet` + `map_batches`: Ray Data hands `map_batches` independent blocks, so a
frame stack cannot see the frames before its block, and a clip cannot see the rows after it. Here
each read task reads whole Parquet row groups of one writer's stream, with the context and
lookahead it needs, and does decode -> preprocess -> stack -> split filter -> balance -> shuffle in
one pass: nothing but finished samples crosses the object store, and there is no separate map
stage whose fusion could break. Read tasks are re-planned every epoch (Ray calls
`get_read_tasks` for each execution), which reshuffles their order and redraws the resampling.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np

from rayapp.data.index import SPLITS, DatasetIndex
from rayapp.data.samples import ReadSpec, TaskSpec, read_samples
from rayapp.frames import FrameSpec

__all__ = ["ReplayDatasource", "plan_tasks"]


def _task(
    task_id: int, index: DatasetIndex, stream: list, run: list[int], rows: int, context: int, lookahead: int
) -> TaskSpec:
    """The run of groups, with enough groups before it for `context` rows and after it for
    `lookahead` rows (in the same writer's stream)."""
    before, need, j = [], context, run[0] - 1
    while need > 0 and j >= 0:
        before.append(j)
        need -= stream[j].rows
        j -= 1
    after, need, j = [], lookahead, run[-1] + 1
    while need > 0 and j < len(stream):
        after.append(j)
        need -= stream[j].rows
        j += 1
    groups = (
        [(g, "context") for g in reversed(before)]
        + [(g, "own") for g in run]
        + [(g, "lookahead") for g in after]
    )
    spec = tuple((index.shards[stream[g].shard].path, stream[g].group, role) for g, role in groups)
    return TaskSpec(task_id, spec, rows)


def plan_tasks(
    index: DatasetIndex, split: str | None, rows_per_task: int, context: int, lookahead: int
) -> list[TaskSpec]:
    """Cut every writer's stream of row groups into runs of about `rows_per_task` rows of `split`."""
    k = None if split is None else SPLITS.index(split)
    runs: list[tuple[list, list[int], int]] = []
    for stream in index.streams.values():
        run: list[int] = []
        run_rows = 0
        for gi, g in enumerate(stream):
            rows = g.rows if k is None else g.split_rows[k]
            if run and (rows == 0 or run_rows + rows > rows_per_task):
                runs.append((stream, run, run_rows))
                run, run_rows = [], 0
            if rows:
                run.append(gi)
                run_rows += rows
        if run:
            runs.append((stream, run, run_rows))
    return [
        _task(i, index, stream, run, rows, context, lookahead) for i, (stream, run, rows) in enumerate(runs)
    ]


def _blocks(spec: ReadSpec, task: TaskSpec, epoch: int) -> Iterator:
    from ray.data import DataContext
    from ray.data.block import BlockAccessor

    retryable = DataContext.get_current().retried_io_errors  # Ray Data's own list, honoured here too
    for batch in read_samples(spec, task, epoch, retryable):
        yield BlockAccessor.batch_to_block(batch)


class ReplayDatasource:
    """Build with `make_datasource`; a subclass of ray.data.Datasource is created lazily so that
    importing rayapp.data does not import Ray."""


def make_datasource(spec: ReadSpec, tasks: list[TaskSpec], sample_bytes: int):
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class _ReplayDatasource(Datasource, ReplayDatasource):
        def __init__(self) -> None:
            super().__init__()
            self.spec, self.tasks, self.sample_bytes = spec, tasks, sample_bytes
            self.epoch = 0

        def get_name(self) -> str:
            return f"Replay[{spec.split or 'all'}]"

        def estimate_inmemory_data_size(self) -> int:
            return sum(t.rows for t in self.tasks) * self.sample_bytes

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list:
            self.epoch += 1
            order = list(self.tasks)
            if self.spec.shuffle:
                rng = np.random.default_rng([self.spec.seed, self.epoch])
                order = [order[i] for i in rng.permutation(len(order))]
            out = []
            for t in order:
                rows = t.rows if self.spec.clip_length == 0 else max(1, t.rows // self.spec.clip_length)
                meta = BlockMetadata(
                    num_rows=rows, size_bytes=rows * self.sample_bytes, input_files=None, exec_stats=None
                )
                out.append(
                    ReadTask(
                        functools.partial(_blocks, self.spec, t, self.epoch),
                        meta,
                        per_task_row_limit=per_task_row_limit,
                    )
                )
            return out

    return _ReplayDatasource()


def sample_bytes(frames: FrameSpec, source_shape: tuple[int, ...], clip_length: int) -> int:
    c, h, w = frames.input_shape(source_shape)
    return c * h * w * max(1, clip_length) + 16
