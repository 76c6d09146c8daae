"""Metrics to CSV and TensorBoard in the run folder, written from the process that sees every
report (the Ray Train controller, or an RLlib driver). Metric names are grouped by prefix
(`train/loss`, `val/balanced_accuracy`, `charts/episode_return`) as TensorBoard groups them."""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
import uuid
from typing import Any

import pyarrow.fs as pafs

from rayapp.storage import exists, read_bytes, resolve, storage_errors, write_bytes_atomic

__all__ = ["MetricsLogger"]


class MetricsLogger:
    """`log(step, metrics)` appends a CSV row (`<folder>/metrics.csv`) and TensorBoard scalars
    (`<folder>/tensorboard/`). On object storage the files are staged locally and uploaded after
    each call. A resumed run (local or object storage) continues the CSV it finds and adds an event
    file of its own next to the earlier ones (a unique suffix: nothing is overwritten).

    `resume_step`: the step a resumed run continues from (its checkpoint's): the earlier run's rows
    after it are dropped from the CSV and hidden in TensorBoard (`purge_step`), since they are
    measured again."""

    def __init__(self, folder: str, resume_step: int | None = None):
        self.loc = resolve(folder)
        self.local = self.loc.path if self.loc.is_local else tempfile.mkdtemp(prefix="rayapp-metrics-")
        os.makedirs(self.local, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        self._tb = None
        self.resume_step = resume_step
        existing = self.loc.join("metrics.csv")
        if exists(existing):  # a resumed run appends to its history
            self.rows = list(csv.DictReader(io.StringIO(read_bytes(existing).decode())))
            if resume_step is not None:
                self.rows = [r for r in self.rows if not _step(r) > resume_step]

    def _writer(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                os.path.join(self.local, "tensorboard"),
                flush_secs=5,
                filename_suffix=f".{uuid.uuid4().hex[:8]}",
                purge_step=None if self.resume_step is None else self.resume_step + 1,
            )
        return self._tb

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {
            "step": step,
            **{k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None},
        }
        self.rows.append(row)
        tb = self._writer()
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                tb.add_scalar(k, v, step)
        tb.flush()
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(self.rows)
        write_bytes_atomic(self.loc.join("metrics.csv"), buf.getvalue().encode())
        if not self.loc.is_local:
            self._upload()

    def _upload(self) -> None:
        tb_dir = os.path.join(self.local, "tensorboard")
        with storage_errors(self.loc.uri):
            pafs.copy_files(
                tb_dir,
                self.loc.join("tensorboard").path,
                source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=self.loc.fs,
            )

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _step(row: dict[str, Any]) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("nan")
