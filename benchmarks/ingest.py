"""Ingest throughput: frames/s delivered into training loops, against baselines in the same run.

Arms (each delivers the same samples: 210x160 RGB Breakout frames -> gray 84x84 -> stacks of 4):
  ray        Ray Data (`ReplayDatasource`) through a `TorchTrainer` with 2 workers and
             `get_dataset_shard(...).iter_torch_batches(...)`; the loop body does nothing.
  dataloader a PyTorch DataLoader over an IterableDataset of the same read tasks
             (`ingest_baseline.py`: 2 worker processes at one thread each, batches built in the
             workers straight into shared memory, a vectorised shuffle buffer of the same size,
             batch_size=None, persistent workers, prefetch_factor=4, in_order=False).
  limit      as many plain processes as CPUs, each running the same read/decode/preprocess/stack
             loop over its share of the tasks, in parallel: what the hardware allows (median of
             4 passes, 2 before the other arms and 2 after them; --quick: 1 and 1).
Each with and without the local shuffle buffer, from local disk and from a loopback S3 server
(moto). Memory: the peak proportional set size (PSS) of all processes of the run while the Ray arm
streams 1x, 4x and 8x the data in one pass each, each in a fresh Ray.

    python benchmarks/ingest.py           # full (a few minutes)
    python benchmarks/ingest.py --quick   # local disk, with shuffle buffer (about a minute)

The last line printed is one JSON object; `ratio_vs_dataloader` and `fraction_of_limit` compare
the Ray arm with the baselines in the headline setting (local disk, shuffle buffer on).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # ingest_baseline
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

BATCH = 256
SHUFFLE = 10_000


# ---- helpers ----------------------------------------------------------------------------------


def make_dataset(root: str, steps: int) -> str:
    """Record Breakout with the teacher (3,000-step shards) into `root`."""
    from rayapp.config import load_config
    from rayapp.record import record

    cfg = load_config(None, [f"run.dir={root}", f"record.steps={steps}", "record.episodes=0", "record.shard_steps=3000",
                             "env.max_episode_steps=1500", "record.collector_cpus=1"])  # fmt: skip
    record(cfg, show_progress=False)
    return cfg.data_uri


def replicate(uri: str, copies: int, dest: str) -> str:
    """`copies` times the shards of `uri` (renamed writers) in a new dataset folder."""
    os.makedirs(os.path.join(dest, "shards"), exist_ok=True)
    shutil.copy(os.path.join(uri, "dataset.json"), dest)
    for name in os.listdir(os.path.join(uri, "shards")):
        for c in range(copies):
            shutil.copy(os.path.join(uri, "shards", name), os.path.join(dest, "shards", f"x{c}{name}"))
    return dest


def upload(uri: str, bucket: str) -> str:
    import pyarrow.fs as pafs

    from rayapp.storage import resolve

    target = resolve(f"s3://{bucket}/bench")
    pafs.copy_files(
        uri, target.path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=target.fs
    )
    return target.uri


OVERRIDES: list[str] = []  # --set section.key=value, applied to every arm's config


def ingest_for(uri: str, shuffle_buffer: int):
    from rayapp.config import load_config
    from rayapp.data import build_ingest

    cfg = load_config(
        None,
        [
            f"data.uri={uri}",
            f"data.shuffle_buffer={shuffle_buffer}",
            "data.val_fraction=0",
            "data.test_fraction=0",
            *OVERRIDES,
        ],
    )
    return cfg, build_ingest(cfg)


class PeakMemory:
    """Sum of PSS over this process and its descendants (Ray's processes included), sampled."""

    def __init__(self, interval: float = 0.5):
        import psutil

        self.psutil, self.interval, self.peak, self._stop = psutil, interval, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = self.psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_full_info().pss
            except (self.psutil.Error, AttributeError):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


# ---- arm 1: Ray Data through TorchTrainer ---------------------------------------------------------


def _ray_loop(config):
    import ray.train
    import torch
    import torch.distributed as dist

    from rayapp.config import DataConfig
    from rayapp.data import torch_batches

    shard = ray.train.get_dataset_shard("train")
    for variant in config["variants"]:
        d = DataConfig(shuffle_buffer=variant, prefetch_batches=config["prefetch"])
        for epoch in range(config["epochs"]):
            t0 = time.perf_counter()
            n = 0
            for batch in torch_batches(shard, d, BATCH, train=True, device="cpu"):
                n += len(batch["obs"])  # the loop body does nothing else
            frames = torch.tensor([float(n)])
            seconds = torch.tensor([time.perf_counter() - t0])
            if dist.is_initialized():
                dist.all_reduce(frames)
                dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
            row = {
                "variant": variant,
                "epoch": epoch,
                "frames_all": frames.item(),
                "seconds_max": seconds.item(),
            }
            if ray.train.get_context().get_world_rank() == 0:
                with open(
                    config["out"], "a"
                ) as f:  # Train V2 keeps no history of reports without checkpoints
                    f.write(json.dumps(row) + "\n")
            ray.train.report(row)
    if config.get("stats") and ray.train.get_context().get_world_rank() == 0:
        with open(config["stats"], "w") as f:  # Ray Data's own breakdown (the last epoch's)
            f.write(shard.stats())


STATS: list[str] = []  # --ray-stats FILE: the first Ray arm writes rank 0's `DataIterator.stats()` there


def ray_arm(uri: str, variants: list[int], epochs: int, workers: int = 2) -> dict[int, list[float]]:
    """frames/s (all workers together) per epoch, per shuffle-buffer variant."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from rayapp.data import configure_data_context
    from rayapp.data.pipeline import train_data_config

    configure_data_context()
    cfg, ingest = ingest_for(uri, 0)
    out = tempfile.mktemp(prefix="ingest-bench-", suffix=".jsonl")
    trainer = TorchTrainer(
        _ray_loop,
        train_loop_config={
            "variants": variants,
            "epochs": epochs,
            "prefetch": cfg.data.prefetch_batches,
            "out": out,
            "stats": STATS.pop() if STATS else None,  # the first call only (local disk)
        },
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 0.5}),
        datasets={"train": ingest.dataset(None, train=True)},
        dataset_config=train_data_config(cfg.data),
        run_config=RunConfig(storage_path=tempfile.mkdtemp(prefix="ingest-bench-")),
    )
    trainer.fit()
    rates: dict[int, list[float]] = {v: [] for v in variants}
    with open(out) as f:
        for row in map(json.loads, f):
            rates[int(row["variant"])].append(row["frames_all"] / row["seconds_max"])
    os.remove(out)
    return rates


# ---- arm 2: a PyTorch DataLoader ------------------------------------------------------------------


def dataloader_arm(uri: str, shuffle_buffer: int, epochs: int, workers: int = 2) -> list[float]:
    """frames/s per epoch of the DataLoader baseline (`ingest_baseline.make_loader`)."""
    from ingest_baseline import make_loader

    _, ingest = ingest_for(uri, shuffle_buffer)
    loader = make_loader(
        ingest.read_spec(None, train=True), ingest.tasks(None), shuffle_buffer, BATCH, workers
    )
    rates = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        n = 0
        for batch in loader:
            n += len(batch["obs"])  # the loop body does nothing else
        rates.append(n / (time.perf_counter() - t0))
    del loader
    return rates


# ---- arm 3: the limit -----------------------------------------------------------------------------


def _limit_worker(args):
    spec, tasks = args
    from rayapp.data.samples import read_samples

    n = 0
    for task in tasks:
        for b in read_samples(spec, task, 0):
            n += len(b["obs"])
    return n


def limit_arm(uri: str, processes: int, passes: int) -> list[float]:
    """frames/s of `passes` full passes of `processes` plain processes over their shares."""
    _, ingest = ingest_for(uri, 0)
    spec, tasks = ingest.read_spec(None, train=False), ingest.tasks(None)
    shares = [(spec, tasks[i::processes]) for i in range(processes)]
    ctx = mp.get_context("spawn")
    rates = []
    with ctx.Pool(processes) as pool:
        pool.map(_limit_worker, [(spec, tasks[:1])] * processes)  # warm: imports, page cache
        for _ in range(passes):
            t0 = time.perf_counter()
            n = sum(pool.map(_limit_worker, shares))
            rates.append(n / (time.perf_counter() - t0))
    return rates


def measure(uri: str, variants: list[int], epochs: int, cpus: int, passes: int = 2) -> dict:
    """Every arm on one dataset. The limit's passes run half before the Ray arm and half after the
    DataLoader's, so a drift of the machine's speed (the second vCPU here) weighs on all arms."""
    limit = limit_arm(uri, cpus, passes)
    ray_rates = ray_arm(uri, variants, epochs)
    dl_rates = {v: dataloader_arm(uri, v, epochs) for v in variants}
    limit += limit_arm(uri, cpus, passes)
    return {"ray": ray_rates, "dataloader": dl_rates, "limit": limit}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], help="config override for all arms (data.x=y)")
    ap.add_argument("--ray-stats", default=None, help="write Ray Data's stats of the Ray arm to this file")
    a = ap.parse_args()
    OVERRIDES.extend(a.set)
    if a.ray_stats:
        STATS.append(os.path.abspath(a.ray_stats))
    steps = a.steps or (12_000 if a.quick else 48_000)
    epochs = a.epochs or (3 if a.quick else 5)  # the first is warm-up; the median of the rest
    import ray

    cpus = os.cpu_count() or 2
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    tmp = tempfile.mkdtemp(prefix="ingest-")
    out: dict = {"benchmark": "ingest", "quick": a.quick, "machine": f"{platform.machine()} {cpus} cpus", "steps": steps,
                 "batch_size": BATCH, "shuffle_buffer": SHUFFLE, "sample": "4x84x84 uint8 (gray, stacked) from 210x160x3", "overrides": a.set}  # fmt: skip
    try:
        uri = make_dataset(tmp, steps)
        variants = [SHUFFLE] if a.quick else [0, SHUFFLE]
        _summarise(out, "local", measure(uri, variants, epochs, cpus, passes=1 if a.quick else 2))
        print("local disk:", json.dumps(out), file=sys.stderr, flush=True)  # progress; stdout stays one line
        if not a.quick:
            import logging

            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)

            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            os.environ.update(
                AWS_ENDPOINT_URL=f"http://{host}:{port}",
                AWS_ACCESS_KEY_ID="x",
                AWS_SECRET_ACCESS_KEY="x",
                AWS_DEFAULT_REGION="us-east-1",
            )
            import boto3

            boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket="bench")
            s3_uri = upload(uri, "bench")
            # Ray's workers must see the endpoint: restart Ray with the variables set
            ray.shutdown()
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
            _summarise(out, "s3", measure(s3_uri, variants, epochs, cpus))
            server.stop()
            # memory while one pass streams 1x, 4x and 8x the data, each in a fresh Ray so earlier arms'
            # idle processes do not count; "over idle" subtracts the freshly started, idle Ray
            for mult in (1, 4, 8):
                u = uri if mult == 1 else replicate(uri, mult, os.path.join(tmp, f"x{mult}"))
                ray.shutdown()
                ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
                time.sleep(2)
                idle = PeakMemory()._sample()
                with PeakMemory() as pm:
                    ray_arm(u, [SHUFFLE], 1)
                out[f"peak_memory_gib_{mult}x"] = round(pm.peak / 2**30, 2)
                out[f"peak_memory_over_idle_gib_{mult}x"] = round((pm.peak - idle) / 2**30, 2)
                if mult > 1:
                    shutil.rmtree(u, ignore_errors=True)
        out["ratio_vs_dataloader"] = round(out["ray_local_shuffle"] / out["dataloader_local_shuffle"], 3)
        out["fraction_of_limit"] = round(out["ray_local_shuffle"] / out["limit_local"], 3)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        ray.shutdown()
    print(json.dumps(out))


def _summarise(out: dict, where: str, m: dict) -> None:
    """`measure`'s rates as the JSON keys (ray_local_shuffle, limit_s3, ...)."""
    for v, rates in m["ray"].items():
        key = "shuffle" if v else "no_shuffle"
        out[f"ray_{where}_{key}"] = _warm(rates)
        out[f"dataloader_{where}_{key}"] = _warm(m["dataloader"][v])
    out[f"limit_{where}"] = round(float(np.median(m["limit"])))
    out[f"limit_{where}_passes"] = [round(x) for x in m["limit"]]


def _warm(rates: list[float]) -> float:
    """The first epoch pays start-up (process pools, footers); report the median of the rest."""
    warm = rates[1:] or rates
    return round(float(np.median(warm)))


if __name__ == "__main__":
    main()
