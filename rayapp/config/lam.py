"""The video-side config sections: importing unlabelled gameplay video (`video`) and the latent
action model (`lam`: its architecture, its Ray Train loop, labelling and mapping to controls)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rayapp.config.fields import opt
from rayapp.errors import ConfigError

__all__ = ["VideoConfig", "LamConfig"]


@dataclass
class VideoConfig:
    """`rayapp import-video SOURCE`: folders of numbered PNG frames or video files into `data.uri`."""

    game: str = opt("", "the game shown in the video (dataset.json's game); empty: env.game")
    fps: float = opt(
        0.0, "frame rate of PNG folders (video files carry theirs); 0: env.frameskip steps of a 60 Hz emulator"
    )
    frame_size: list[int] = opt(
        [0, 0], "resize every frame to [height, width] on import; [0, 0] keeps the source size (all must agree)"
    )
    every: int = opt(1, "keep every n-th frame of a video file (a 60 fps video at every: 4 is 15 steps/s)")
    max_frames: int = opt(0, "at most this many frames per episode (0: all)")
    max_bad_episodes: int = opt(
        0, "episodes with a missing or unreadable frame that may be skipped (and counted) before the import fails"
    )
    append: bool = opt(False, "add episodes to an existing action-less dataset instead of refusing")


@dataclass
class LamConfig:
    """The latent action model: a VQ-VAE over consecutive frame pairs (LAPA, Genie, LAPO)."""

    # ---- what the model sees ----------------------------------------------------------------------
    grayscale: bool = opt(True, "one gray channel per frame (the specification's default); false: RGB")
    resize: list[int] = opt(
        [0, 0], "frame size the model sees, [height, width]; [0, 0]: the dataset's (210x160 on Atari)"
    )
    # ---- the model --------------------------------------------------------------------------------
    enc_channels: list[int] = opt([64, 128, 256, 512, 512], "the encoder's 5 stride-2 convolutions")
    dec_channels: list[int] = opt([512, 512, 256, 128, 64], "the decoder's 5 transposed convolutions")
    latent_dim: int = opt(128, "dimension of a latent vector (and a code)")
    codes: int = opt(256, "vocabulary size: codes in the codebook (fsq: the product of fsq_levels)")
    positions: int = opt(
        0, "latent positions: 0 = the encoder's whole grid (5x7 at 160x210), P > 0 = pooled to P"
    )
    frame_skips: bool = opt(
        True, "the decoder's own frame-t convolutions feed its upsampling at every scale (a U-Net on frame t only: "
        "nothing of frame t+1 passes but through the quantised latent)",
    )
    residual: bool = opt(True, "predict the change: next frame = frame t + the decoder's output (copying is the start)")
    quantizer: Literal["vq", "fsq"] = opt("vq", "vq: EMA codebook with dead-code reset; fsq: finite scalar quantisation")
    fsq_levels: list[int] = opt([], "fsq: levels per dimension (empty: chosen so their product is `codes`)")
    commitment: float = opt(0.25, "commitment loss weight")
    entropy_weight: float = opt(0.01, "weight of the codebook-entropy regulariser (fights collapse)")
    changed_weight: float = opt(
        0.0, "extra loss weight of the pixels that change between the frames (0: plain MSE; copying frame t wins it on Atari)"
    )
    ema_decay: float = opt(0.99, "vq: EMA decay of the codebook")
    label_weight: float = opt(
        0.0, "LAOM's few-label supervision: a linear head on the latent learns the true actions of the labelled "
        "subset `lam map` uses (lam.map_episodes or lam.map_fraction of label_uri's training split), its "
        "cross-entropy added with this weight (0: video only; Pong's latent ignores the paddle without it)",
    )
    label_uri: str = opt(
        "", "label_weight > 0: path or URI of the dataset with true actions the labelled pairs come from (empty: data.uri)",
        path=True,
    )
    reset_every: int = opt(10000, "vq: re-initialise codes unused over this many steps (0: never)")
    # ---- training (rayapp lam train) --------------------------------------------------------------
    steps: int = opt(100000, "optimiser steps")
    batch_size: int = opt(32, "pairs per optimiser step (over all workers)")
    grad_accum: int = opt(1, "micro-batches per optimiser step (a batch of batch_size/grad_accum each)")
    lr: float = opt(3e-4, "Adam learning rate at the start")
    lr_end: float = opt(1e-4, "learning rate at the end (cosine decay)")
    grad_clip: float = opt(1.0, "clip the gradient norm (0: off)")
    num_workers: int = opt(1, "Ray Train workers (data-parallel, DDP)")
    use_gpu: bool = opt(False, "train on GPUs (mixed precision and channels-last there)")
    cpus_per_worker: float = opt(1.0, "CPUs per worker")
    amp: bool = opt(True, "bfloat16 autocast on GPU (ignored on CPU)")
    torch_threads: int = opt(0, "torch intra-op threads per worker (0: the worker's CPUs)")
    val_every: int = opt(1000, "validate (PSNR, SSIM, L1/L2, codebook usage, images) every this many steps")
    val_batches: int = opt(8, "validation batches per validation")
    checkpoint_every: int = opt(10000, "checkpoint every this many steps (and at the end)")
    log_every: int = opt(50, "training losses to TensorBoard every this many steps")
    image_every: int = opt(2500, "example reconstructions and difference heat maps every this many steps")
    max_failures: int = opt(2, "worker-group failures to recover from (resume from the latest checkpoint)")
    wandb: bool = opt(False, "also log to Weights & Biases (when installed)")
    # ---- labelling, dreaming and mapping ----------------------------------------------------------
    checkpoint: str = opt("", "a LAM run folder or checkpoint for label/dream (default: run.dir)", path=True)
    label_batch: int = opt(256, "pairs per labelling batch")
    report_codes: int = opt(8, "label: frame-pair grids for this many of the most used codes")
    dream_steps: int = opt(32, "dream: frames to roll the decoder forward")
    dream_codes: list[int] = opt([], "dream: the code sequence (repeats to fill dream_steps); empty: random")
    map_episodes: int = opt(0, "map: labelled episodes to train the control head on (0: use map_fraction)")
    map_fraction: float = opt(0.1, "map: share of the labelled episodes used when map_episodes is 0")
    map_epochs: int = opt(10, "map: passes over the labelled subset")
    map_lr: float = opt(5e-4, "map: learning rate of the head (the trunk gets map_trunk_lr)")
    map_trunk_lr: float = opt(1e-4, "map: learning rate of the latent-pretrained trunk (0: frozen)")


def validate_video_sections(v: VideoConfig, m: LamConfig) -> None:
    """Cross-key checks of `video` and `lam` (called by Config.validate)."""
    if v.fps < 0 or v.every < 1 or v.max_frames < 0 or v.max_bad_episodes < 0:
        raise ConfigError("video.fps >= 0, video.every >= 1, video.max_frames >= 0, video.max_bad_episodes >= 0")
    for key, size in (("video.frame_size", v.frame_size), ("lam.resize", m.resize)):
        if len(size) != 2 or min(size) < 0 or (0 in size and size != [0, 0]):
            raise ConfigError(f"{key} must be [height, width] with both >= 1, or [0, 0], got {size}")
    if len(m.enc_channels) != 5 or len(m.dec_channels) != 5 or min(m.enc_channels + m.dec_channels) < 1:
        raise ConfigError("lam.enc_channels and lam.dec_channels need 5 positive channel counts each")
    if m.codes < 2 or m.latent_dim < 1 or m.positions < 0:
        raise ConfigError("lam.codes >= 2, lam.latent_dim >= 1, lam.positions >= 0 (0: the whole grid)")
    if m.steps < 1 or m.batch_size < 1 or m.grad_accum < 1 or m.batch_size % m.grad_accum:
        raise ConfigError(
            f"lam.steps >= 1 and lam.batch_size ({m.batch_size}) a positive multiple of lam.grad_accum ({m.grad_accum})"
        )
    if m.batch_size < m.num_workers:
        raise ConfigError(f"lam.batch_size ({m.batch_size}) must be at least lam.num_workers ({m.num_workers})")
    if not 0 < m.lr_end <= m.lr:
        raise ConfigError(f"lam.lr_end must be in (0, lam.lr], got lr {m.lr}, lr_end {m.lr_end}")
    if min(m.val_every, m.checkpoint_every, m.log_every, m.image_every, m.val_batches, m.num_workers) < 1:
        raise ConfigError("lam.val_every, checkpoint_every, log_every, image_every, val_batches, num_workers >= 1")
    if m.label_weight < 0:
        raise ConfigError(f"lam.label_weight must be >= 0 (0: no labels), got {m.label_weight}")
    if not 0.0 < m.map_fraction <= 1.0 or m.map_episodes < 0 or m.map_epochs < 1:
        raise ConfigError("lam.map_fraction in (0, 1], lam.map_episodes >= 0, lam.map_epochs >= 1")
    if m.quantizer == "fsq" and m.fsq_levels:
        product = 1
        for level in m.fsq_levels:
            product *= level
        if product != m.codes:
            raise ConfigError(f"lam.fsq_levels {m.fsq_levels} give {product} codes, but lam.codes is {m.codes}")
