"""What the Ray Train controller does with each report of the BC workers: metrics to CSV and
TensorBoard, one line per epoch on the console, and `latest.json` beside the checkpoints."""

from __future__ import annotations

import json

from ray.train import UserCallback

from rayapp.errors import StorageError, find_error
from rayapp.metrics import MetricsLogger
from rayapp.storage import resolve, write_bytes_atomic

__all__ = ["ReportCallback"]


class ReportCallback(UserCallback):
    """Runs in the Ray Train controller: metrics to CSV/TensorBoard, an epoch line, `latest.json`;
    and stops the run on a worker's StorageError (see `after_exception`)."""

    def __init__(self, folder: str, epochs: int, spec: dict):
        self.folder, self.epochs, self.spec = folder, epochs, spec
        self.logger = None

    def after_report(self, run_context, metrics, checkpoint):
        if self.logger is None:
            self.logger = MetricsLogger(self.folder)
        m = metrics[0]
        self.logger.log(int(m["epoch"]), m)
        val = (
            f" val acc {m['val/accuracy']:.3f} balanced {m['val/balanced_accuracy']:.3f}"
            if "val/accuracy" in m
            else ""
        )
        print(f"pretrain epoch {m['epoch']}/{self.epochs}: loss {m['train/loss']:.4f} train acc {m['train/accuracy']:.3f}{val} "
              f"({m['train/samples_per_s']:,.0f} samples/s)", flush=True)  # fmt: skip
        if checkpoint is not None:
            write_bytes_atomic(
                resolve(self.folder).join("latest.json"),
                json.dumps({"epoch": m["epoch"], "spec": self.spec}).encode(),
            )

    def after_exception(self, run_context, worker_exceptions):
        """A worker's StorageError has already been retried with backoff (rayapp.storage.retry_io):
        restarting the worker group (`pretrain.max_failures`, meant for lost workers) would only
        wait for the same storage again. Raising here ends the run (Ray Train does not retry a
        controller error); the driver finds the StorageError in it and prints it."""
        for exc in worker_exceptions.values():
            err = find_error(exc, StorageError)
            if err is not None:
                raise err
