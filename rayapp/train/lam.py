"""`rayapp lam train`: the latent action model on Ray Train, streaming frame pairs with Ray Data.

    rayapp lam train --config configs/lam-cpu.yaml --set data.uri=runs/video/replays
    rayapp lam train --set lam.use_gpu=true --set lam.num_workers=4        # the full size, on GPUs

Reads any dataset in the replay contract, with or without actions (the action column is ignored):
every step with a previous step in its episode is one pair (frame t, frame t+1), split 80/10/10 by
episode (`data.val_fraction`, `data.test_fraction`). Writes `<run.dir>/lam/`: checkpoints (every
`lam.checkpoint_every` steps; `best.json` names the lowest validation reconstruction loss),
`metrics.csv`, `tensorboard/` (losses, PSNR, SSIM, L1/L2, codebook usage and perplexity,
reconstructions with difference heat maps), and resumes from its latest checkpoint when rerun.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchTrainer

from rayapp.config import Config, absolute_paths, config_to_dict
from rayapp.data.pipeline import Ingest, build_pair_ingest, configure_data_context, train_data_config
from rayapp.errors import RayappError, ReplayFormatError, StageError, StorageError, find_error
from rayapp.frames import FrameSpec
from rayapp.models.checkpoint import write_best
from rayapp.models.lam import LamSpec
from rayapp.replay.reader import ReplayDataset
from rayapp.runs import save_resolved_config
from rayapp.runtime import init_ray, require_cpus_beside
from rayapp.signals import kept_sigint
from rayapp.storage import exists, read_bytes, resolve, write_bytes_atomic
from rayapp.train.bc import _failure, _storage
from rayapp.train.lam_loop import NOT_VALIDATED, lam_train_fn

__all__ = ["train_lam", "LamResult", "lam_frames", "lam_spec"]


@dataclass
class LamResult:
    checkpoint: str
    metrics: dict[str, Any]
    pairs: dict[str, int]


def lam_frames(cfg: Config) -> FrameSpec:
    """What one frame of a pair looks like to the model: `lam.grayscale`, `lam.resize` (0, 0:
    the dataset's size), `data.crop`; the 2-frame stack is the pair."""
    return FrameSpec(bool(cfg.lam.grayscale), tuple(cfg.lam.resize), tuple(cfg.data.crop), 2)


def lam_spec(cfg: Config, frames: FrameSpec, source_shape: tuple[int, ...], label_classes: tuple[int, ...] = ()) -> LamSpec:
    c, h, w = frames.frame_shape(source_shape)
    m = cfg.lam
    return LamSpec(
        in_channels=c,
        height=h,
        width=w,
        enc_channels=tuple(m.enc_channels),
        dec_channels=tuple(m.dec_channels),
        latent_dim=m.latent_dim,
        codes=m.codes,
        positions=m.positions,
        quantizer=m.quantizer,
        commitment=m.commitment,
        entropy_weight=m.entropy_weight,
        frame_skips=m.frame_skips,
        residual=m.residual,
        changed_weight=m.changed_weight,
        ema_decay=m.ema_decay,
        fsq_levels=tuple(m.fsq_levels),
        label_classes=tuple(label_classes),  # non-empty only when lam.label_weight > 0 (labelled_ingest)
        label_weight=m.label_weight if label_classes else 0.0,
    )


def labelled_ingest(cfg: Config, frames: FrameSpec, video: Ingest) -> Ingest | None:
    """`lam.label_weight` > 0: the few labelled pairs (LAOM), from `lam.label_uri` (default
    data.uri), the training episodes `rayapp lam map` would use; frames like the video's."""
    m = cfg.lam
    if not m.label_weight:
        return None
    uri = m.label_uri or cfg.data_uri
    try:
        ingest = build_pair_ingest(cfg, frames, ReplayDataset(uri), labelled=(m.map_episodes, m.map_fraction))
    except ReplayFormatError as e:
        raise RayappError(f"lam.label_weight={m.label_weight} needs true actions: {e}") from None
    mine, theirs = (frames.frame_shape(x.index.info.observation.shape) for x in (video, ingest))
    if mine != theirs:
        raise RayappError(f"lam.label_uri {uri} gives {theirs} frames, the video {video.index.ds.uri} {mine}: "
                          "set lam.resize so both agree")  # fmt: skip
    return ingest


class LamReportCallback(UserCallback):
    """Runs in the Ray Train controller: one console line per report, `latest.json` beside the
    checkpoints, and a worker's StorageError ends the run (as in `ReportCallback`)."""

    def __init__(self, folder: str, steps: int):
        self.folder, self.steps = folder, steps

    def after_report(self, run_context, metrics, checkpoint):
        m = metrics[0]
        val = ""
        if m.get("val/recon_loss", NOT_VALIDATED) < NOT_VALIDATED:
            val = (f" val recon {m['val/recon_loss']:.5f}, psnr {m.get('val/psnr', math.nan):.2f} dB, changed pixels "
                   f"{m.get('val/psnr_changed', math.nan):.2f} dB (copy {m.get('val/psnr_changed_copy', math.nan):.2f}), "
                   f"delta-psnr {m.get('val/delta_psnr', math.nan):.2f}, codes used {m.get('val/codes_used', 0)}")  # fmt: skip
        print(f"lam step {m['step']}/{self.steps}:{val}", flush=True)
        if checkpoint is not None:
            write_bytes_atomic(resolve(self.folder).join("latest.json"), json.dumps({"step": m["step"]}).encode())

    def after_exception(self, run_context, worker_exceptions):
        for exc in worker_exceptions.values():
            err = find_error(exc, StorageError)
            if err is not None:
                raise err


def train_lam(cfg: Config) -> LamResult:
    # the workers (metrics, TensorBoard, W&B) and the controller's callback (latest.json) write from
    # their own working directories, not the driver's: relative paths are made absolute here
    cfg = absolute_paths(cfg)
    m = cfg.lam
    init_ray(cfg.ray)
    configure_data_context()
    frames = lam_frames(cfg)
    ingest = build_pair_ingest(cfg, frames)  # dataset problems surface before any worker starts
    info = ingest.index.info
    labels = labelled_ingest(cfg, frames, ingest)
    spec = lam_spec(cfg, frames, info.observation.shape, tuple(c.n for c in labels.controls) if labels else ())
    folder = resolve(cfg.run.dir).join("lam")
    latest = folder.join("latest.json")
    if exists(latest):
        done = int(json.loads(read_bytes(latest))["step"])
        if done >= m.steps:
            raise RayappError(f"{folder.uri} already trained {done} steps (lam.steps={m.steps}); raise lam.steps "
                              "to continue, or use another run.dir")  # fmt: skip
        print(f"lam: resuming {folder.uri} after step {done} of {m.steps}", flush=True)
    save_resolved_config(cfg, "lam")
    pairs = ingest.pair_counts
    has_val = pairs["val"] > 0
    datasets = {"train": ingest.dataset("train")}
    if has_val:
        datasets["val"] = ingest.dataset("val")
    if labels is not None:
        datasets["labelled"] = labels.dataset("train")
    game = {"game": info.game, "env_id": info.env_id, "obs_shape": list(info.observation.shape),
            "frame_rate": info.frame_rate, "dataset": info.dataset_id, "dataset_uri": ingest.index.ds.uri}  # fmt: skip
    loop_config = {"cfg": config_to_dict(cfg), "spec": spec.to_json(), "frames": frames.to_json(), "game": game,
                   "has_val": has_val, "label_columns": list(labels.output_columns) if labels else []}  # fmt: skip
    resources = {"CPU": m.cpus_per_worker, **({"GPU": 1.0} if m.use_gpu else {})}
    require_cpus_beside(m.num_workers, m.cpus_per_worker, cfg.data.read_cpus, "lam.cpus_per_worker")
    storage_path, storage_fs, scheme = _storage(cfg.run.dir)
    print(f"lam: {spec.describe()}; {pairs['train']:,} training pairs, {pairs['val']:,} validation, {pairs['test']:,} "
          f"test; {m.steps:,} steps of {m.batch_size} pairs on {m.num_workers} worker(s)", flush=True)  # fmt: skip
    if labels is not None:
        n_eps = len(labels.index.episodes("train"))
        print(f"lam: supervised with the true actions of {labels.pair_counts['train']:,} pairs in {n_eps} training "
              f"episode(s) of {labels.index.ds.uri} (lam.label_weight {m.label_weight})", flush=True)  # fmt: skip
    trainer = TorchTrainer(
        lam_train_fn,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=m.num_workers, use_gpu=m.use_gpu, resources_per_worker=resources),
        datasets=datasets,
        dataset_config=train_data_config(cfg.data),
        run_config=RunConfig(
            name="lam",
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=m.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=3, checkpoint_score_attribute="val/recon_loss", checkpoint_score_order="min"
            ),
            callbacks=[LamReportCallback(folder.uri, m.steps)],
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    try:
        with kept_sigint():  # fit() leaves Ray Train's own Ctrl+C handler installed
            result = trainer.fit()
    except Exception as e:  # noqa: BLE001 - Ray wraps worker errors in its own types
        err = _failure(e, folder)
        raise (StageError(str(err).replace("pretrain failed", "lam train failed")) if type(err) is StageError
               else err) from e  # fmt: skip
    best = result.get_best_checkpoint("val/recon_loss", "min") or result.checkpoint
    if best is None:
        raise StageError(f"lam train produced no checkpoint in {folder.uri}")
    best_uri = scheme + best.path
    metrics = next((mm for c, mm in result.best_checkpoints if c.path == best.path), result.metrics)
    write_best(cfg.run.dir, "lam", best_uri, metrics)
    return LamResult(best_uri, metrics, pairs)
