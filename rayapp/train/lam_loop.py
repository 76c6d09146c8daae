"""The latent action model's loop on each Ray Train worker (`lam_train_fn`).

Workers stream frame pairs from their shard of the training split (`get_dataset_shard("train")`,
the 2-frame stacks of `rayapp.data.pipeline.build_pair_ingest`), take `lam.grad_accum`
micro-batches per Adam step (`lam.batch_size` pairs over all workers), decay the learning rate
from `lam.lr` to `lam.lr_end` (cosine), reset codes unused for `lam.reset_every` steps, and
validate every `lam.val_every` steps on a fixed set of validation pairs (the same pairs every
time, so the curve compares like with like). Rank 0 logs to `<run.dir>/lam/` (CSV, TensorBoard
scalars every `lam.log_every` steps, code-usage histograms, reconstructions with difference heat
maps every `lam.image_every`) and writes a checkpoint every `lam.checkpoint_every` steps and at the
end; a rerun (or a restarted worker group) resumes from the latest with the optimizer, the step,
the usage counts and the logs' step, so the curve continues.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint

from rayapp.config import config_from_dict
from rayapp.data.pipeline import torch_batches
from rayapp.errors import ConfigError, RayappError, StorageError
from rayapp.frames import FrameSpec
from rayapp.models.checkpoint import unwrap
from rayapp.models.lam import LamSpec, LatentActionModel, perplexity
from rayapp.models.lam_checkpoint import load_lam, save_lam
from rayapp.models.numerics import flush_denormals
from rayapp.progress import Progress, say
from rayapp.storage import explain, join
from rayapp.train.lam_eval import add_sums, finish_sums, pair_sums, predictions, split_pair
from rayapp.train.lam_visuals import LamLogger, reconstruction_grid

__all__ = ["lam_train_fn", "learning_rate", "LAM_STATE"]

LAM_STATE = "lam_state.pt"
LOSSES = ("recon", "commit", "entropy", "label", "total")  # the model's losses, logged as train/<name>_loss


def learning_rate(step: int, steps: int, lr: float, lr_end: float) -> float:
    """Cosine decay from `lr` at step 0 to `lr_end` at `steps`."""
    t = min(1.0, step / max(1, steps))
    return lr_end + 0.5 * (lr - lr_end) * (1.0 + math.cos(math.pi * t))


def _wandb(cfg, rank: int, folder: str):
    if not cfg.lam.wandb or rank != 0:
        return None
    try:
        import wandb
    except ImportError:
        raise ConfigError("lam.wandb is true but wandb is not installed (pip install wandb)") from None
    return wandb.init(project="rayapp-lam", name=os.path.basename(cfg.run.dir.rstrip("/")), config=cfg.lam.__dict__,
                      resume="allow", dir=tempfile.gettempdir())  # fmt: skip


def lam_train_fn(config: dict[str, Any]) -> None:
    cfg = config_from_dict(config["cfg"])
    m, d = cfg.lam, cfg.data
    spec = LamSpec.from_json(config["spec"])
    frames = FrameSpec.from_json(config["frames"])
    C = spec.in_channels
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(m.torch_threads or max(1, int(np.ceil(m.cpus_per_worker))))
    flush_denormals()  # Adam's moments of idle weights decay into slow subnormals (rayapp.models.numerics)
    torch.manual_seed(cfg.run.seed * 1000 + rank)
    device = ray.train.torch.get_device()
    cuda = device.type == "cuda"
    amp = cuda and m.amp
    model = LatentActionModel(spec)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    opt = torch.optim.Adam(model.parameters(), lr=m.lr)
    step, best = 0, math.inf
    since_reset = torch.zeros(spec.codes, dtype=torch.float64, device=device)
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as folder:
            unwrap(model).load_state_dict(load_lam(folder).state_dict)
            state = _load_state(folder, device)
        opt.load_state_dict(state["optimizer"])
        step, best = int(state["step"]), float(state["best"])
        since_reset = state["since_reset"].to(device)
        if rank == 0:
            say(f"lam: resumed from the checkpoint of step {step}", sys.stdout)
    run_folder = join(cfg.run.dir, "lam")
    logger = LamLogger(run_folder, resume_step=step if ckpt is not None else None) if rank == 0 else None
    wb = _wandb(cfg, rank, run_folder)
    dist = world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()

    def reduce(t: torch.Tensor) -> torch.Tensor:
        if dist:
            torch.distributed.all_reduce(t)
        return t

    micro = max(1, m.batch_size // world // m.grad_accum)
    val_pairs = _fixed_pairs(ray.train.get_dataset_shard("val"), d, micro, m.val_batches, device, C) \
        if config["has_val"] else []  # fmt: skip
    train_it = ray.train.get_dataset_shard("train")
    labelled = _labelled_batches(cfg, config["label_columns"], max(1, micro // 2), device, C)
    bar = Progress(m.steps, "lam train [rank 0]", unit="step", log_every=15, stream=sys.stdout, initial=step) \
        if rank == 0 else None  # fmt: skip
    window = {"t0": time.perf_counter(), "pairs": 0, "micro_batches": 0, "sums": torch.zeros(5, dtype=torch.float64)}
    usage_window = torch.zeros(spec.codes, dtype=torch.float64, device=device)
    epoch, k = 0, 0
    while step < m.steps:
        for batch in torch_batches(train_it, d, micro, train=True, device=device, seed=cfg.run.seed + epoch):
            frame_t, frame_t1 = split_pair(batch["obs"], C)
            if cuda:
                frame_t = frame_t.contiguous(memory_format=torch.channels_last)
                frame_t1 = frame_t1.contiguous(memory_format=torch.channels_last)
            model.train()
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(frame_t, frame_t1, next(labelled) if labelled else None)
            (out.losses["total"] / m.grad_accum).backward()
            usage = out.usage.detach().to(device=device, dtype=torch.float64)
            since_reset += usage
            usage_window += usage
            window["pairs"] += len(frame_t)
            window["micro_batches"] += 1
            losses = torch.stack([out.losses[x].detach().float() for x in LOSSES])
            window["sums"] += losses.to(window["sums"])  # one device sync per micro-batch
            k += 1
            if k % m.grad_accum:
                continue
            for g in opt.param_groups:
                g["lr"] = learning_rate(step, m.steps, m.lr, m.lr_end)
            if m.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), m.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if bar:
                bar.update(1, loss=f"{float(out.losses['recon']):.5f}")
            metrics: dict[str, Any] = {}
            if m.reset_every and step % m.reset_every == 0:
                reduce(since_reset)
                metrics["train/codes_reset"] = unwrap(model).reset_unused_codes(since_reset)
                since_reset.zero_()
            if step % m.log_every == 0 or step == m.steps:
                metrics.update(_train_metrics(window, usage_window, reduce, opt, cuda, device))
                usage_window.zero_()
            if val_pairs and (step % m.val_every == 0 or step == m.steps):
                metrics.update(_validate(model, val_pairs, spec.codes, reduce, amp, device))
                best = min(best, metrics["val/recon_loss"])
                if logger:
                    logger.histogram("val/code_usage", metrics.pop("_usage"), step)
                metrics.pop("_usage", None)
            if logger and val_pairs and (step % m.image_every == 0 or step == m.steps):
                f_t, f_t1 = val_pairs[0]
                _, pred, _ = predictions(unwrap(model).eval(), f_t, f_t1)
                logger.image("val/reconstructions", reconstruction_grid(f_t, f_t1, pred), step)
            if metrics and logger:
                logger.log(step, {"step": step, **metrics})
                if wb is not None:
                    wb.log(metrics, step=step)
            if step % m.checkpoint_every == 0 or step == m.steps:
                _report(cfg, model, spec, frames, config, opt, step, best, since_reset, metrics, rank)
            if step >= m.steps:
                break
        epoch += 1
    if bar:
        bar.close()
    if logger:
        logger.close()
    if wb is not None:
        wb.finish()


def _train_metrics(window, usage, reduce, opt, cuda, device) -> dict[str, Any]:
    """Losses averaged over the micro-batches since the last log line, pairs/s over all workers."""
    elapsed = time.perf_counter() - window["t0"]
    n = reduce(torch.tensor([window["pairs"]], dtype=torch.float64, device=device)).item()
    s, batches = window["sums"], max(1, window["micro_batches"])
    out = {
        "train/samples_per_s": n / elapsed if elapsed > 0 else 0.0,
        "train/lr": opt.param_groups[0]["lr"],
        "train/perplexity": float(perplexity(reduce(usage.clone()))),
    }
    for i, name in enumerate(LOSSES):
        out[f"train/{name}_loss"] = float(s[i]) / batches
    if cuda:
        out["train/gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    window["t0"], window["pairs"], window["micro_batches"] = time.perf_counter(), 0, 0
    s.zero_()
    return out


def _labelled_batches(cfg, columns: list[str], batch_size: int, device, channels: int):
    """Endless (frame t, frame t+1, actions (B, controls)) batches of this worker's shard of the
    labelled pairs (lam.label_weight), a new shuffle each pass; None without labels."""
    if not columns:
        return None
    it = ray.train.get_dataset_shard("labelled")

    def batches():
        epoch = 0
        while True:
            empty = True
            for b in torch_batches(it, cfg.data, batch_size, train=True, device=device, seed=cfg.run.seed + 7919 + epoch):
                empty = False
                yield (*split_pair(b["obs"], channels), torch.stack([b[c] for c in columns], dim=1))
            if empty:
                raise RayappError("lam: this worker's shard of the labelled pairs is empty (fewer labelled "
                                  "blocks than workers): label more episodes or use fewer lam.num_workers")  # fmt: skip
            epoch += 1

    return batches()


def _fixed_pairs(it, d, batch_size: int, batches: int, device, channels: int) -> list:
    """The first `batches` validation batches, kept: every validation scores the same pairs."""
    out = []
    for batch in torch_batches(it, d, batch_size, train=False, device=device):
        out.append(split_pair(batch["obs"], channels))
        if len(out) >= batches:
            break
    return out


def _validate(model, pairs, codes_n: int, reduce, amp: bool, device) -> dict[str, Any]:
    net = unwrap(model).eval()
    gen = torch.Generator(device="cpu").manual_seed(0)  # the same random codes every validation
    sums, recon = None, torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
        for f_t, f_t1 in pairs:
            out = net(f_t, f_t1)
            recon += torch.tensor([float(out.losses["recon"]) * len(f_t), len(f_t)], dtype=torch.float64, device=device)
            sums = add_sums(sums, {k: v.to(device) for k, v in pair_sums(net, f_t, f_t1, codes_n, gen).items()})
    for v in sums.values():
        reduce(v)
    reduce(recon)
    metrics = finish_sums({k: v.cpu() for k, v in sums.items()}, "val")
    metrics["val/recon_loss"] = float(recon[0] / recon[1])
    metrics["_usage"] = sums["usage"].cpu().numpy()
    return metrics


def _load_state(folder: str, device) -> dict[str, Any]:
    try:
        state = torch.load(os.path.join(folder, LAM_STATE), map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - the restricted unpickler refusing the file, or a damaged one
        raise RayappError(f"{LAM_STATE} of the checkpoint being resumed is unreadable or not plain tensors "
                          f"({type(e).__name__}); delete that checkpoint folder or use another run.dir") from None  # fmt: skip
    if not {"optimizer", "step", "best", "since_reset"} <= set(state):
        raise RayappError(f"{LAM_STATE} of the checkpoint being resumed lacks the optimizer state or the step")
    return state


# the score of a checkpoint saved between validations: finite, because Ray Train's checkpoint manager
# keeps its state as JSON, which turns inf into null and then fails to rank the restored checkpoints
NOT_VALIDATED = 1e30


def _report(cfg, model, spec, frames, config, opt, step, best, since_reset, metrics, rank) -> None:
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    if "val/recon_loss" not in scalars:  # Ray Train ranks checkpoints by it
        scalars["val/recon_loss"] = NOT_VALIDATED
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            meta = {"stage": "lam", "step": step, "metrics": scalars}
            save_lam(folder, model, spec, frames, config["game"], config["cfg"], meta)
            torch.save({"optimizer": opt.state_dict(), "step": step, "best": best, "since_reset": since_reset.cpu()},
                       os.path.join(folder, LAM_STATE))  # fmt: skip
            checkpoint = Checkpoint.from_directory(folder)
        try:
            ray.train.report({"step": step, **scalars}, checkpoint=checkpoint)
        except OSError as e:
            raise StorageError(f"{explain(join(cfg.run.dir, 'lam'), e)} (writing the checkpoint of step {step})") from e
