"""The behaviour-cloning loop each Ray Train worker runs (`train_fn_per_worker`), its validation
pass and its metrics (accuracy, balanced accuracy, per-action recall).

The driver (`rayapp.train.bc.pretrain`) builds the ingest and the `TorchTrainer` that runs this;
rank 0 writes a checkpoint every epoch (weights and model arguments as safetensors/JSON, see
`rayapp.models.checkpoint`) plus the optimizer state for resuming (`train_state.pt`: tensors and
plain values, read back with `torch.load(weights_only=True)`, which refuses anything else).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.nn.functional as F
from ray.train import Checkpoint

from rayapp.config import config_from_dict
from rayapp.data.pipeline import torch_batches
from rayapp.errors import RayappError, StorageError
from rayapp.frames import FrameSpec
from rayapp.models.checkpoint import load_policy, save_policy, unwrap
from rayapp.models.nets import ModelSpec, build_model
from rayapp.models.numerics import flush_denormals
from rayapp.progress import Progress, say
from rayapp.storage import explain, join

__all__ = ["train_fn_per_worker", "classification_metrics", "load_train_state", "TRAIN_STATE"]

TRAIN_STATE = "train_state.pt"


def load_train_state(folder: str, device: Any = "cpu") -> dict[str, Any]:
    """The optimizer state and epoch of a checkpoint folder, through torch's restricted unpickler:
    a file with anything but tensors and plain values in it is refused, not run."""
    path = os.path.join(folder, TRAIN_STATE)
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - the restricted unpickler refusing the file, or a damaged one
        raise RayappError(
            f"{TRAIN_STATE} of the checkpoint being resumed is refused: not tensors and plain values "
            f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); delete that checkpoint folder to resume "
            "from an earlier one, or use another run.dir"
        ) from None
    if not isinstance(state, dict) or not {"optimizer", "epoch"} <= set(state):
        raise RayappError(f"{TRAIN_STATE} of the checkpoint being resumed lacks the optimizer state or epoch")
    return state


HEAD_PREFIXES = ("heads.", "value.")  # PolicyNetwork's output layers (rayapp.models.nets)


def _param_groups(model: torch.nn.Module, lr: float, trunk_lr: float | None) -> list[dict[str, Any]]:
    """One group, or the heads at `lr` and the initialised trunk at `trunk_lr` (0: frozen)."""
    if trunk_lr is None:
        return [{"params": list(model.parameters())}]
    heads, trunk = [], []
    for name, prm in unwrap(model).named_parameters():
        (heads if name.startswith(HEAD_PREFIXES) else trunk).append(prm)
    if trunk_lr == 0:
        for prm in trunk:
            prm.requires_grad_(False)
        return [{"params": heads, "lr": lr}]
    return [{"params": heads, "lr": lr}, {"params": trunk, "lr": trunk_lr}]


def classification_metrics(confusion: np.ndarray, labels: list[str], prefix: str) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean recall over classes present) and per-action recall."""
    total = confusion.sum()
    support = confusion.sum(axis=1)
    recall = np.divide(np.diag(confusion), support, out=np.full(len(support), np.nan), where=support > 0)
    out = {
        f"{prefix}/accuracy": float(np.trace(confusion) / total) if total else float("nan"),
        f"{prefix}/balanced_accuracy": float(np.nanmean(recall)) if np.any(support > 0) else float("nan"),
    }
    for i, lab in enumerate(labels):
        if support[i] > 0:
            out[f"{prefix}/recall_{lab}"] = float(recall[i])
    return out


def _flatten(outputs: list[torch.Tensor], batch: dict[str, torch.Tensor], columns: tuple[str, ...]):
    """Logits and labels as (N, n) / (N,), dropping padded clip steps."""
    mask = batch.get("mask")
    flat = []
    for logits, col in zip(outputs, columns):
        y = batch[col]
        if mask is not None:
            m = mask.reshape(-1)
            logits, y = logits.reshape(-1, logits.shape[-1])[m], y.reshape(-1)[m]
        flat.append((logits.float(), y))
    return flat


def train_fn_per_worker(config: dict[str, Any]) -> None:
    cfg = config_from_dict(config["cfg"])
    p, d = cfg.pretrain, cfg.data
    spec = ModelSpec.from_json(config["spec"])
    frames = FrameSpec.from_json(config["frames"])
    columns = tuple(config["output_columns"])
    labels = config["labels"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(p.torch_threads or max(1, int(np.ceil(p.cpus_per_worker))))
    flush_denormals()  # Adam's moments of idle weights decay into slow subnormals (rayapp.models.numerics)
    device = ray.train.torch.get_device()
    cuda = device.type == "cuda"
    amp = cuda and p.amp

    torch.manual_seed(cfg.run.seed * 1000 + rank)  # the initial weights follow run.seed (DDP copies rank 0's)
    model = build_model(spec)
    if config.get("input_mean") is not None:  # model.center: the training split's mean frame
        model.encoder.input_mean.copy_(torch.as_tensor(config["input_mean"]))
    trunk_only = cfg.model.init_mode == "trunk" and bool(config.get("init_checkpoint"))
    if config.get("init_checkpoint"):
        state = load_policy(config["init_checkpoint"]).state_dict
        if trunk_only:  # the heads stay new: they learn this dataset's labels
            state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
            missing = model.load_state_dict(state, strict=False).missing_keys
            if any(not k.startswith(HEAD_PREFIXES) for k in missing):
                raise RayappError(f"model.init_checkpoint lacks trunk weights {missing[:3]}")
        else:
            model.load_state_dict(state)
    if cuda and not spec.recurrent:
        model = model.to(memory_format=torch.channels_last)
    # before DDP wraps it: a frozen trunk must be frozen when DDP registers the parameters
    groups = _param_groups(model, p.lr, cfg.model.trunk_lr if trunk_only else None)
    model = ray.train.torch.prepare_model(model)
    opt = torch.optim.AdamW(groups, lr=p.lr, weight_decay=p.weight_decay)
    start = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as folder:
            state = load_train_state(folder, device)
            saved = load_policy(folder).state_dict
        unwrap(model).load_state_dict(saved)
        opt.load_state_dict(state["optimizer"])
        start = state["epoch"] + 1
        if rank == 0:
            say(f"pretrain: resumed from the checkpoint of epoch {state['epoch'] + 1}", sys.stdout)
    weights = (
        [torch.tensor(w, dtype=torch.float32, device=device) for w in config["class_weights"]]
        if config["class_weights"]
        else None
    )
    n_classes = spec.controls[0][1]
    train_it = ray.train.get_dataset_shard("train")
    has_val = config["has_val"]
    val_it = ray.train.get_dataset_shard("val") if has_val else None
    dist = world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()

    def reduce(t: torch.Tensor, op=None) -> torch.Tensor:
        if dist:
            torch.distributed.all_reduce(t, op=op or torch.distributed.ReduceOp.SUM)
        return t

    for epoch in range(start, p.epochs):
        model.train()
        conf = torch.zeros(n_classes, n_classes, dtype=torch.int64, device=device)
        loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # summed loss, batches
        bar = (
            Progress(
                None,
                f"pretrain epoch {epoch + 1}/{p.epochs} [rank 0]",
                unit="samples",
                log_every=15,
                stream=sys.stdout,
            )  # fmt: skip
            if rank == 0
            else None
        )
        t0 = time.perf_counter()
        samples = 0
        for batch in torch_batches(
            train_it, d, p.batch_size, train=True, device=device, seed=cfg.run.seed + epoch
        ):
            obs = batch["obs"]
            if cuda and not spec.recurrent:
                obs = obs.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                outputs = model(obs)
            flat = _flatten(outputs, batch, columns)
            loss = sum(
                F.cross_entropy(
                    lg, y, weight=None if weights is None else weights[i], label_smoothing=p.label_smoothing
                )
                for i, (lg, y) in enumerate(flat)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if p.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
            opt.step()
            lg, y = flat[0]
            conf += torch.bincount(y * n_classes + lg.argmax(1), minlength=n_classes * n_classes).reshape(
                n_classes, n_classes
            )
            loss_sum += torch.tensor([loss.item(), 1.0], dtype=torch.float64, device=device)
            samples += len(obs)
            if bar:
                bar.update(len(obs), loss=f"{loss.item():.3f}")
        elapsed = torch.tensor([time.perf_counter() - t0], dtype=torch.float64, device=device)
        if bar:
            bar.close()
        n_all = reduce(torch.tensor([samples], dtype=torch.float64, device=device)).item()
        elapsed = reduce(elapsed, torch.distributed.ReduceOp.MAX if dist else None).item()
        conf, loss_sum = reduce(conf), reduce(loss_sum)
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "train/loss": float(loss_sum[0] / max(1.0, loss_sum[1])),
            "train/samples": int(n_all),
            "train/samples_per_s": n_all / elapsed if elapsed else 0.0,
            **classification_metrics(conf.cpu().numpy(), labels, "train"),
            "data/corrupt_shards_skipped": config["corrupt_shards_skipped"],
        }
        if val_it is not None:
            metrics.update(
                _validate(model, val_it, d, p.batch_size, device, amp, columns, n_classes, labels, reduce)
            )
            metrics["val/confusion"] = json.dumps(metrics.pop("_confusion"))
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if rank == 0:
                meta = {
                    "stage": "pretrain",
                    "epoch": epoch + 1,
                    "metrics": {k: v for k, v in metrics.items() if k != "val/confusion"},
                }
                save_policy(folder, model, spec, frames, config["game"], config["cfg"], meta)
                torch.save({"optimizer": opt.state_dict(), "epoch": epoch}, os.path.join(folder, TRAIN_STATE))
                checkpoint = Checkpoint.from_directory(folder)
            try:
                ray.train.report(metrics, checkpoint=checkpoint)
            except OSError as e:  # the upload into run.dir (pyarrow has retried it)
                raise StorageError(
                    f"{explain(join(cfg.run.dir, 'pretrain'), e)} (writing the checkpoint of epoch {epoch + 1})"
                ) from e


def _validate(model, it, d, batch_size, device, amp, columns, n_classes, labels, reduce) -> dict[str, Any]:
    model.eval()
    conf = torch.zeros(n_classes, n_classes, dtype=torch.int64, device=device)
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad():
        for batch in torch_batches(it, d, batch_size, train=False, device=device):
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                outputs = model(batch["obs"])
            flat = _flatten(outputs, batch, columns)
            lg, y = flat[0]
            loss_sum += torch.tensor(
                [sum(F.cross_entropy(a, b, reduction="sum").item() for a, b in flat), len(y)],
                dtype=torch.float64,
                device=device,
            )
            conf += torch.bincount(y * n_classes + lg.argmax(1), minlength=n_classes * n_classes).reshape(
                n_classes, n_classes
            )
    conf, loss_sum = reduce(conf), reduce(loss_sum)
    out = {
        "val/loss": float(loss_sum[0] / max(1.0, loss_sum[1])),
        **classification_metrics(conf.cpu().numpy(), labels, "val"),
    }
    out["_confusion"] = conf.cpu().numpy().tolist()
    return out
