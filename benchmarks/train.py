"""Behaviour-cloning training throughput, with the ingest rate and the bare compute beside it.

  bc         samples/s of `rayapp pretrain` (TorchTrainer, real Ray Data ingest, 2 workers on CPU;
             one worker per GPU with --gpu: bfloat16 autocast and channels-last)
  compute    the same network's forward + backward + AdamW step in a bare torch loop on batches
             already in memory (one process, all threads; or the GPU): the compute ceiling
  ingest     frames/s the same pipeline delivers into no-op training loops (benchmarks/ingest.py)

If bc is close to compute and ingest is well above bc, compute is the bottleneck (and vice versa).

    python benchmarks/train.py --quick
    python benchmarks/train.py            # on a GPU machine: --gpu

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402


def _ingest_module():
    spec = importlib.util.spec_from_file_location(
        "bench_ingest", os.path.join(os.path.dirname(__file__), "ingest.py")
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_ingest"] = mod
    spec.loader.exec_module(mod)
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(mod)  # workers cannot import a script by name
    return mod


def compute_only(device: str, batch: int, iters: int, amp: bool) -> float:
    from rayapp.models import ModelSpec, build_model

    torch.manual_seed(0)
    spec = ModelSpec((4, 84, 84), (("action", 4),))
    model = build_model(spec).to(device)
    cuda = device.startswith("cuda")
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 255, (batch, 4, 84, 84), dtype=torch.uint8, device=device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (batch,), device=device)

    def step():
        with torch.autocast(
            device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=amp and cuda
        ):
            loss = torch.nn.functional.cross_entropy(model(x)[0].float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    if cuda:
        torch.cuda.synchronize()
    return batch * iters / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--gpu", action="store_true")
    a = ap.parse_args()
    import ray

    from rayapp.config import load_config
    from rayapp.train.bc import pretrain

    steps = 8000 if a.quick else 30000
    epochs = 2 if a.quick else 3
    cpus = os.cpu_count() or 2
    ray.init(num_cpus=cpus, include_dashboard=True, log_to_driver=False)
    bench = _ingest_module()
    tmp = tempfile.mkdtemp(prefix="train-bench-")
    out = {
        "benchmark": "train",
        "quick": a.quick,
        "machine": f"{platform.machine()} {cpus} cpus",
        "device": "cuda" if a.gpu else "cpu",
    }
    try:
        uri = bench.make_dataset(tmp, steps)
        torch.set_num_threads(cpus)
        out["compute_samples_per_s"] = round(
            compute_only("cuda" if a.gpu else "cpu", 256, 10 if a.quick else 30, amp=True)
        )
        if a.gpu:
            out["gpu"] = torch.cuda.get_device_name(0)
        sets = [
            f"run.dir={tmp}/run",
            f"data.uri={uri}",
            f"pretrain.epochs={epochs}",
            "data.val_fraction=0.05",
            "data.test_fraction=0.05",
        ]
        if a.gpu:
            sets += [
                "pretrain.use_gpu=true",
                "pretrain.num_workers=1",
                "pretrain.cpus_per_worker=2",
                "pretrain.batch_size=512",
            ]
        pretrain(load_config(None, sets))
        rows = list(csv.DictReader(open(os.path.join(tmp, "run", "pretrain", "metrics.csv"))))
        warm = [float(r["train/samples_per_s"]) for r in rows[1:]] or [float(rows[0]["train/samples_per_s"])]
        out["bc_samples_per_s"] = round(sum(warm) / len(warm))
        out["bc_samples_per_s_per_epoch"] = [round(float(r["train/samples_per_s"])) for r in rows]
        ingest = bench.ray_arm(uri, [bench.SHUFFLE], 2)[bench.SHUFFLE]
        out["ingest_frames_per_s"] = bench._warm(ingest)
        out["bc_fraction_of_compute"] = round(out["bc_samples_per_s"] / out["compute_samples_per_s"], 3)
        out["ingest_over_bc"] = round(out["ingest_frames_per_s"] / out["bc_samples_per_s"], 2)
        out["bottleneck"] = "compute" if out["ingest_over_bc"] > 1.5 else "data"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        ray.shutdown()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
