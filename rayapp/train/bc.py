"""`rayapp pretrain`: behaviour cloning on Ray Train, streaming replays with Ray Data.

Three parts, as in Ray Train's release benchmarks: the per-epoch loop, `train_fn_per_worker(config)`
(what each worker runs), and `pretrain(cfg)` (the driver: ingest plan, shape checks, TorchTrainer).

    rayapp pretrain --config configs/quickstart.yaml                # after `rayapp record`
    rayapp pretrain --config configs/smoke.yaml --set pretrain.num_workers=1

Checkpoints (every epoch, to `<run.dir>/pretrain/`, local or s3://) hold the weights, the model
arguments, the frame preprocessing, the game and the full config; a killed worker or driver
resumes from the latest one. `<run.dir>/pretrain/best.json` names the best by validation
balanced accuracy; `metrics.csv` and `tensorboard/` hold the curves.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ray.train import UserCallback

from rayapp.config import Config, config_from_dict, config_to_dict
from rayapp.data.pipeline import build_ingest, configure_data_context, torch_batches, train_data_config
from rayapp.data.preprocess import FrameSpec
from rayapp.errors import RayappError, StageError
from rayapp.models.checkpoint import load_policy, save_policy, unwrap, write_best
from rayapp.models.nets import ModelSpec, build_model
from rayapp.progress import Progress
from rayapp.runs import save_resolved_config
from rayapp.runtime import init_ray
from rayapp.storage import exists, read_bytes, resolve, write_bytes_atomic

__all__ = ["train_fn_per_worker", "pretrain", "PretrainResult", "classification_metrics", "check_compatible"]

TRAIN_STATE = "train_state.pt"


# ---- metrics --------------------------------------------------------------------------------------


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


# ---- the worker -----------------------------------------------------------------------------------


def train_fn_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    cfg = config_from_dict(config["cfg"])
    p, d = cfg.pretrain, cfg.data
    spec = ModelSpec.from_json(config["spec"])
    frames = FrameSpec.from_json(config["frames"])
    columns = tuple(config["output_columns"])
    labels = config["labels"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(p.torch_threads or max(1, int(np.ceil(p.cpus_per_worker))))
    device = ray.train.torch.get_device()
    cuda = device.type == "cuda"
    amp = cuda and p.amp

    model = build_model(spec)
    if config.get("init_checkpoint"):
        model.load_state_dict(load_policy(config["init_checkpoint"]).state_dict)
    if cuda and not spec.recurrent:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    start = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as folder:
            state = torch.load(os.path.join(folder, TRAIN_STATE), map_location=device, weights_only=False)
        unwrap(model).load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = state["epoch"] + 1
        if rank == 0:
            print(f"pretrain: resumed from the checkpoint of epoch {state['epoch'] + 1}", flush=True)
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
            Progress(None, f"pretrain epoch {epoch + 1}/{p.epochs} [rank 0]", unit="samples", log_every=15)
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
                torch.save(
                    {"model": unwrap(model).state_dict(), "optimizer": opt.state_dict(), "epoch": epoch},
                    os.path.join(folder, TRAIN_STATE),
                )
                checkpoint = Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=checkpoint)


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


# ---- the driver -----------------------------------------------------------------------------------


@dataclass
class PretrainResult:
    checkpoint: str  # the best checkpoint folder
    metrics: dict[str, Any]  # its metrics
    history: list[dict[str, Any]]
    summary: dict[str, Any]


def check_compatible(
    spec: ModelSpec, game: str, other: ModelSpec, other_game: str, what: str, data_uri: str
) -> None:
    """Frame shape, game and action space of a dataset against a model's; a clear error otherwise."""
    problems = []
    if tuple(spec.input_shape) != tuple(other.input_shape):
        problems.append(
            f"input {'x'.join(map(str, other.input_shape))} vs {'x'.join(map(str, spec.input_shape))} from the data config"
        )
    if tuple(spec.controls) != tuple(other.controls):
        problems.append(f"actions {list(other.controls)} vs {list(spec.controls)} in the dataset")
    if game != other_game:
        problems.append(f"game {other_game} vs {game}")
    if spec.arch != other.arch:
        problems.append(f"arch {other.arch} vs {spec.arch}")
    if problems:
        raise RayappError(f"{what} does not match dataset {data_uri}: " + "; ".join(problems))


class ReportCallback(UserCallback):
    """Runs in the Ray Train controller: metrics to CSV/TensorBoard, an epoch line, `latest.json`."""

    def __init__(self, folder: str, epochs: int, spec: dict):
        self.folder, self.epochs, self.spec = folder, epochs, spec
        self.logger = None

    def after_report(self, run_context, metrics, checkpoint):
        from rayapp.train.metrics import MetricsLogger

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


def _storage(run_dir: str):
    loc = resolve(run_dir)
    if loc.is_local:
        return loc.path, None, ""
    return loc.path, loc.fs, f"{loc.scheme}://"


def pretrain(cfg: Config, callbacks: list | None = None) -> PretrainResult:
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    p = cfg.pretrain
    init_ray(cfg.ray)
    configure_data_context()
    ingest = build_ingest(cfg)  # dataset problems (missing, corrupt, empty) surface before training
    info = ingest.index.info
    spec = ModelSpec(
        ingest.input_shape,
        tuple((c.name, c.n) for c in info.actions),
        cfg.model.arch,
        cfg.model.hidden,
        cfg.model.lstm_hidden,
    )
    game = {"game": info.game, "env_id": info.env_id, "obs_shape": list(info.observation.shape),
            "actions": [list(c.labels) for c in info.actions], "frame_rate": info.frame_rate, "dataset": info.dataset_id}  # fmt: skip
    init = ""
    if cfg.model.init_checkpoint:
        pol = load_policy(cfg.model.init_checkpoint)
        check_compatible(
            spec,
            info.game,
            pol.spec,
            pol.game.get("game", "?"),
            f"model.init_checkpoint {pol.path}",
            ingest.index.ds.uri,
        )
        init = pol.path
    folder = resolve(cfg.run.dir).join("pretrain")
    latest = folder.join("latest.json")
    if exists(latest):  # a run folder trained before: resuming it must not mix shapes
        prev = json.loads(read_bytes(latest))
        check_compatible(
            spec,
            info.game,
            ModelSpec.from_json(prev["spec"]),
            info.game,
            f"the earlier training in {folder.uri}",
            ingest.index.ds.uri,
        )
        if prev["epoch"] >= p.epochs:
            raise RayappError(
                f"{folder.uri} already trained {prev['epoch']} epochs (pretrain.epochs={p.epochs}); raise pretrain.epochs to continue, or use another run.dir"
            )
    save_resolved_config(cfg, "pretrain")
    has_val = ingest.rows("val") > 0
    datasets = {"train": ingest.dataset("train")}
    if has_val:
        datasets["val"] = ingest.dataset("val")
    score = "val/balanced_accuracy" if has_val else "train/balanced_accuracy"
    labels = list(info.actions[0].labels) or [str(i) for i in range(info.actions[0].n)]
    summary = ingest.summary()
    loop_config = {
        "cfg": config_to_dict(cfg),
        "spec": spec.to_json(),
        "frames": ingest.frames.to_json(),
        "output_columns": list(ingest.output_columns),
        "labels": labels,
        "class_weights": None if ingest.class_weights is None else [w.tolist() for w in ingest.class_weights],
        "has_val": has_val,
        "game": game,
        "init_checkpoint": init,
        "corrupt_shards_skipped": len(ingest.index.skipped),
    }
    resources = {"CPU": p.cpus_per_worker}
    if p.use_gpu:
        resources["GPU"] = p.gpus_per_worker
    storage_path, storage_fs, scheme = _storage(cfg.run.dir)
    print(f"pretrain: {spec.describe()}; {summary['splits']['train']['steps']:,} training steps in "
          f"{summary['splits']['train']['episodes']} episodes, {p.epochs} epochs on {p.num_workers} worker(s)", flush=True)  # fmt: skip
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=p.num_workers, use_gpu=p.use_gpu, resources_per_worker=resources
        ),
        datasets=datasets,
        dataset_config=train_data_config(cfg.data),
        run_config=RunConfig(
            name="pretrain",
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=p.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=p.checkpoints_to_keep,
                checkpoint_score_attribute=score,
                checkpoint_score_order="max",
            ),
            callbacks=[ReportCallback(folder.uri, p.epochs, spec.to_json()), *(callbacks or [])],
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as e:  # noqa: BLE001 - Ray wraps worker errors in its own types
        cause = getattr(e, "__cause__", None) or e
        if isinstance(cause, RayappError):
            raise cause from None
        raise StageError(
            f"pretrain failed: {type(cause).__name__}: {str(cause)[:400]}; its checkpoints stay in {folder.uri}, rerun to resume"
        ) from e
    best = result.get_best_checkpoint(score, "max") or result.checkpoint
    if best is None:
        raise StageError(f"pretrain produced no checkpoint in {folder.uri}")
    best_uri = scheme + best.path
    best_metrics = next((m for c, m in result.best_checkpoints if c.path == best.path), result.metrics)
    history = []
    metrics_csv = folder.join("metrics.csv")
    if exists(metrics_csv):
        import csv
        import io

        history = list(csv.DictReader(io.StringIO(read_bytes(metrics_csv).decode())))
    write_best(cfg.run.dir, "pretrain", best_uri, best_metrics)
    write_bytes_atomic(folder.join("ingest.json"), (json.dumps(summary, indent=2) + "\n").encode())
    return PretrainResult(best_uri, best_metrics, history, summary)
