"""The latent action model (LAM): a VQ-VAE over consecutive frame pairs (LAPA, Genie, LAPO).

The encoder sees (frame t, frame t+1) on the channel axis (with `context: k`, the k frames before
t too, oldest first, as LAPO's inverse dynamics model sees o_{t-1}): 5 stride-2 convolutions (BatchNorm,
ReLU; 6->64->128->256->512->512 for RGB) and a 1x1 projection to `latent_dim`, which for 210x160
frames is a 7x5 grid. `positions: 0` keeps the whole grid (a code per position); `positions: P`
average-pools it to P positions (a near-square layout: 1 -> 1x1, 4 -> 2x2). The quantiser is
`vector_quantize_pytorch`'s: `vq` (EMA codebook, straight-through gradients, commitment loss,
dead-code expiry, plus `reset_unused_codes`, which re-seeds codes unused since the last reset from
recent encoder outputs through the library's own `Codebook.replace`) or `fsq` (finite scalar
quantisation: no codebook to collapse).

The decoder is the next-frame predictor (our specification's part 3): frame t (and its `context`
frames: Genie's and LAPO's predictors see the past, so that motion already under way, Pong's
ball, needs no code) through its own 5
stride-2 convolutions, the quantised latent through FiLM at the bottleneck and at every
upsampling scale (spatial FiLM from the grid, interpolated; global FiLM from the pooled codes),
then 5 transposed convolutions (512->512->256->128->64->C). Nothing from the pair encoder reaches
the decoder except through the quantised latent. `frame_skips` adds U-Net links from the
decoder's own frame-t convolutions (they carry frame t only, which the decoder sees anyway; the
change must still come through the codes), and `residual` predicts frame t + a bounded change,
so copying frame t is where training starts; both are on by default because without them a
32x-downsampled view of frame t cannot even reproduce the static screen (see benchmarks/lam.py).

Loss: MSE(prediction, frame t+1) (changed pixels weighted 1 + `changed_weight`) + commitment +
entropy_weight * (log K - H(mean soft code assignment of the batch)): the last term rewards using
the whole codebook (fights collapse).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LamSpec", "LamOutput", "LatentActionModel", "joint_code", "psnr", "ssim", "changed_mask", "perplexity"]


def _pool_layout(p: int) -> tuple[int, int]:
    rows = int(math.isqrt(p))
    while p % rows:
        rows -= 1
    return rows, p // rows


@dataclass(frozen=True)
class LamSpec:
    in_channels: int = 1
    height: int = 210
    width: int = 160
    enc_channels: tuple[int, ...] = (64, 128, 256, 512, 512)
    dec_channels: tuple[int, ...] = (512, 512, 256, 128, 64)
    latent_dim: int = 128
    codes: int = 256
    positions: int = 0  # 0: the encoder's whole grid
    quantizer: str = "vq"
    commitment: float = 0.25
    entropy_weight: float = 0.01
    ema_decay: float = 0.99
    dead_code_threshold: float = 0.0  # the library's continuous expiry (0: only reset_unused_codes)
    fsq_levels: tuple[int, ...] = ()
    frame_skips: bool = True
    residual: bool = True
    changed_weight: float = 0.0  # extra weight of the pixels that change between t and t+1
    context: int = 0  # frames before t that the encoder and the decoder see (oldest first)
    # LAOM (Nikulin et al.): a linear head per control on the continuous latent learns the true
    # action of a few labelled pairs; its cross-entropy joins the loss with label_weight
    label_classes: tuple[int, ...] = ()  # actions per control of the labels (empty: no head)
    label_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.quantizer not in ("vq", "fsq"):
            raise ValueError(f"quantizer must be 'vq' or 'fsq', got {self.quantizer!r}")
        if len(self.enc_channels) != 5 or len(self.dec_channels) != 5:
            raise ValueError("enc_channels and dec_channels need 5 entries each")
        if self.context < 0:
            raise ValueError(f"context must be >= 0 frames, got {self.context}")
        if self.label_weight < 0 or (self.label_weight > 0 and not self.label_classes):
            raise ValueError(f"label_weight {self.label_weight} needs label_classes (the labels' actions per control)")
        if self.quantizer == "fsq" and int(np.prod(self.levels)) != self.codes:
            raise ValueError(f"fsq_levels {list(self.levels)} give {int(np.prod(self.levels))} codes, not {self.codes}")

    @property
    def levels(self) -> tuple[int, ...]:
        """FSQ levels: as given, or a split of `codes` into factors of 8, 5, 4, 3 and 2."""
        if self.fsq_levels:
            return tuple(self.fsq_levels)
        left, out = self.codes, []
        for f in (4, 8, 5, 3, 2):
            while left % f == 0 and left > 1:
                out.append(f)
                left //= f
        return tuple(out) if left == 1 else (self.codes,)

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.height, self.width
        for _ in range(5):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w

    @property
    def layout(self) -> tuple[int, int]:
        return self.grid if self.positions == 0 else _pool_layout(self.positions)

    @property
    def n_positions(self) -> int:
        r, c = self.layout
        return r * c

    @property
    def vocabulary(self) -> int:
        return self.codes**self.n_positions

    def describe(self) -> str:
        r, c = self.layout
        seen = f" + {self.context} context frame(s)" if self.context else ""
        return (f"LAM {self.quantizer} {self.codes} codes x {r}x{c} positions (dim {self.latent_dim}) on "
                f"{self.in_channels}x{self.height}x{self.width} pairs{seen}, enc {list(self.enc_channels)}")  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(d: dict[str, Any]) -> LamSpec:
        known = {f.name for f in dataclasses.fields(LamSpec)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        return LamSpec(**kw)


@dataclass
class LamOutput:
    pred: torch.Tensor  # (B, C, H, W) predicted frame t+1
    codes: torch.Tensor  # (B, P) long
    losses: dict[str, torch.Tensor]  # recon, commit, entropy, total
    usage: torch.Tensor  # (codes,) counts of this batch
    latent: torch.Tensor | None = None  # (B, P, D) the encoder's continuous latents, before quantisation


def _down(chans: list[int]) -> nn.ModuleList:
    return nn.ModuleList(
        nn.Sequential(nn.Conv2d(a, b, 3, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True))
        for a, b in zip(chans[:-1], chans[1:])
    )


class _FiLM(nn.Module):
    """Per-channel scale and shift of `channels` features from the quantised latent."""

    def __init__(self, latent_dim: int, n_positions: int, channels: int, spatial: bool):
        super().__init__()
        self.spatial = spatial
        if spatial:
            self.net = nn.Conv2d(latent_dim, 2 * channels, 1)
        else:
            self.net = nn.Sequential(nn.Linear(latent_dim * n_positions, 256), nn.ReLU(), nn.Linear(256, 2 * channels))
        nn.init.zeros_(self.net.weight if spatial else self.net[-1].weight)

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.spatial:
            gb = F.interpolate(self.net(z), size=h.shape[-2:], mode="nearest")
        else:
            gb = self.net(z.flatten(1))[:, :, None, None]
        gamma, beta = gb.chunk(2, dim=1)
        return h * (1 + gamma) + beta


def _fit(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Crop (or zero-pad) the last two dimensions to (h, w)."""
    x = x[..., :h, :w]
    ph, pw = h - x.shape[-2], w - x.shape[-1]
    return F.pad(x, (0, pw, 0, ph)) if ph > 0 or pw > 0 else x


class LatentActionModel(nn.Module):
    def __init__(self, spec: LamSpec):
        super().__init__()
        from vector_quantize_pytorch import FSQ, VectorQuantize

        self.spec = s = spec
        C, D = s.in_channels, s.latent_dim
        self.encoder = _down([(s.context + 2) * C, *s.enc_channels])
        self.project = nn.Conv2d(s.enc_channels[-1], D, 1)
        if s.quantizer == "vq":
            self.quantizer = VectorQuantize(dim=D, codebook_size=s.codes, decay=s.ema_decay, commitment_weight=s.commitment,
                                            threshold_ema_dead_code=s.dead_code_threshold)  # fmt: skip
        else:
            # the library asks for its symmetric variant when a level is 2
            self.quantizer = FSQ(levels=list(s.levels), dim=D, preserve_symmetry=2 in s.levels)
        self.frame_encoder = _down([(s.context + 1) * C, *s.enc_channels])
        spatial = s.positions == 0
        P = s.n_positions
        self.bottleneck = nn.Conv2d(s.enc_channels[-1], s.dec_channels[0], 1)
        outs = [*s.dec_channels[1:], C]
        self.films = nn.ModuleList(_FiLM(D, P, c, spatial) for c in s.dec_channels)
        self.up = nn.ModuleList(nn.ConvTranspose2d(a, b, 4, 2, 1) for a, b in zip(s.dec_channels, outs))
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in outs[:-1])
        skips = list(reversed(s.enc_channels[:-1]))  # frame-t features at 1/16, 1/8, 1/4, 1/2
        self.fuse = nn.ModuleList(
            nn.Conv2d(c + k, c, 3, 1, 1) if s.frame_skips else nn.Identity() for c, k in zip(outs[:-1], skips)
        )
        self.label_heads = nn.ModuleList(nn.Linear(P * D, n) for n in s.label_classes)
        self._recent: torch.Tensor | None = None  # encoder outputs of the last batch (code resets)

    # ---- parts -------------------------------------------------------------------------------
    # `frame_t` is (B, (context + 1) * C, H, W): frame t with its context frames before it
    def _last(self, frame_t: torch.Tensor) -> torch.Tensor:
        return frame_t[:, -self.spec.in_channels :]

    def _latent(self, frame_t: torch.Tensor, frame_t1: torch.Tensor) -> torch.Tensor:
        """(B, P, D) continuous latents, one per position, row-major."""
        x = torch.cat([frame_t, frame_t1], dim=1)
        for layer in self.encoder:
            x = layer(x)
        z = self.project(x)
        if self.spec.positions:
            z = F.adaptive_avg_pool2d(z, self.spec.layout)
        return z.flatten(2).transpose(1, 2)

    def _quantize(self, z: torch.Tensor):
        with torch.autocast(device_type=z.device.type, enabled=False):  # distances in float32
            z = z.float()
            if self.spec.quantizer == "vq":
                q, idx, commit = self.quantizer(z)
                return q, idx, commit.sum()
            q, idx = self.quantizer(z)
            return q, idx, z.new_zeros(())

    def _map(self, q: torch.Tensor) -> torch.Tensor:
        """(B, P, D) -> (B, D, rows, cols)."""
        r, c = self.spec.layout
        return q.transpose(1, 2).reshape(len(q), -1, r, c)

    def _decode_latent(self, frame_t: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        s = self.spec
        zmap = self._map(q).to(frame_t.dtype) if frame_t.dtype != torch.float32 else self._map(q)
        feats, x = [], frame_t
        for layer in self.frame_encoder:
            x = layer(x)
            feats.append(x)
        h = self.films[0](self.bottleneck(x), zmap)
        sizes = [f.shape[-2:] for f in feats[:-1]][::-1] + [frame_t.shape[-2:]]
        skips = feats[:-1][::-1]
        for i, up in enumerate(self.up):
            h = _fit(up(h), *sizes[i])
            if i < len(self.norms):
                if s.frame_skips:
                    h = self.fuse[i](torch.cat([h, skips[i]], dim=1))
                h = F.relu(self.norms[i](h))
                h = self.films[i + 1](h, zmap)
        h = _fit(h, s.height, s.width)
        return self._last(frame_t) + torch.tanh(h) if s.residual else torch.sigmoid(h)

    # ---- public ------------------------------------------------------------------------------
    def forward(self, frame_t: torch.Tensor, frame_t1: torch.Tensor, labelled: tuple | None = None) -> LamOutput:
        """`labelled`: (frame_t, frame_t1, actions (B, controls)) of a few pairs with true actions:
        the heads' cross-entropy on them is `losses["label"]`, added to the total with
        `spec.label_weight` (in this call, so that DDP sees every parameter used in forward)."""
        z = self._latent(frame_t, frame_t1)
        q, idx, commit = self._quantize(z)
        pred = self._decode_latent(frame_t, q)
        recon = self.recon_loss(pred, frame_t, frame_t1)
        entropy = self._entropy_loss(z) if self.spec.entropy_weight and self.spec.quantizer == "vq" else recon.new_zeros(())
        label = recon.new_zeros(())
        if labelled is not None and len(self.label_heads):
            lt, lt1, actions = labelled
            for k, logits in enumerate(self.action_logits(lt, lt1)):
                label = label + F.cross_entropy(logits.float(), actions[:, k].long())
        total = recon + commit + self.spec.entropy_weight * entropy + self.spec.label_weight * label
        self._recent = z.detach().reshape(-1, z.shape[-1]).float()
        usage = torch.bincount(idx.reshape(-1), minlength=self.spec.codes).float()
        losses = {"recon": recon, "commit": commit, "entropy": entropy, "label": label, "total": total}
        return LamOutput(pred, idx.long(), losses, usage, z)

    def action_logits(self, frame_t: torch.Tensor, frame_t1: torch.Tensor) -> list[torch.Tensor]:
        """The label heads' logits of the pairs, one (B, actions) tensor per control (with gradients)."""
        z = self._latent(frame_t, frame_t1).flatten(1)
        return [head(z) for head in self.label_heads]

    def recon_loss(self, pred: torch.Tensor, frame_t: torch.Tensor, frame_t1: torch.Tensor) -> torch.Tensor:
        """MSE, the changed pixels weighted 1 + changed_weight (the weighted mean: on Atari a few
        hundred pixels change out of 8,400, and plain MSE is won by copying frame t)."""
        err = (pred.float() - frame_t1.float()).pow(2)
        if not self.spec.changed_weight:
            return err.mean()
        w = 1.0 + self.spec.changed_weight * changed_mask(self._last(frame_t), frame_t1).float()
        return (err * w).sum() / (w.sum() * err.shape[1])

    def _entropy_loss(self, z: torch.Tensor) -> torch.Tensor:
        """log K - H(batch-mean soft assignment): 0 when every code is equally used."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = z.float().reshape(-1, z.shape[-1])
            embed = self.quantizer.codebook.detach().float()
            d = torch.cdist(flat, embed).pow(2)
            p = torch.softmax(-d / d.detach().mean().clamp(min=1e-6), dim=-1).mean(0)
            return math.log(self.spec.codes) + (p * torch.log(p.clamp(min=1e-12))).sum()

    @torch.no_grad()
    def encode(self, frame_t: torch.Tensor, frame_t1: torch.Tensor) -> torch.Tensor:
        """(B, P) codes of the pairs."""
        _, idx, _ = self._quantize(self._latent(frame_t, frame_t1))
        return idx.long()

    def decode(self, frame_t: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The predicted next frame of `frame_t` under given codes (B, P)."""
        codes = codes.long().to(frame_t.device)
        if self.spec.quantizer == "vq":
            q = self.quantizer.get_output_from_indices(codes)
        else:
            q = self.quantizer.indices_to_codes(codes)
        return self._decode_latent(frame_t, q.float())

    def random_codes(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randint(0, self.spec.codes, (batch, self.spec.n_positions), generator=generator)

    @torch.no_grad()
    def reset_unused_codes(self, usage_since_last_reset: torch.Tensor) -> int:
        """Re-seed the codes unused since the last reset from the last batch's encoder outputs
        (vq only; the library's `Codebook.replace`). Returns how many were reset."""
        if self.spec.quantizer != "vq" or self._recent is None:
            return 0
        dead = usage_since_last_reset.to(self._recent.device) == 0
        n = int(dead.sum())
        if n:
            self.quantizer._codebook.replace(self._recent[None], dead[None])  # noqa: SLF001 - the library's own reset
        return n


def joint_code(codes, n_codes: int):
    """(B, P) codes -> (B,) one index in mixed radix (the first position most significant)."""
    P = codes.shape[-1]
    if n_codes**P > 2**31:
        raise ValueError(f"{n_codes} codes at {P} positions make {n_codes}**{P} joint codes, more than an int32 holds")
    weights = [n_codes ** (P - 1 - p) for p in range(P)]
    if isinstance(codes, torch.Tensor):
        return (codes.long() * torch.tensor(weights, device=codes.device)).sum(-1)
    return (np.asarray(codes, np.int64) * np.asarray(weights, np.int64)).sum(-1)


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample PSNR in dB (peak 1.0); with a mask, over its pixels only (NaN when it is empty).
    Identical images give inf."""
    err = (pred.float() - target.float()).pow(2).flatten(1)
    if mask is None:
        mse = err.mean(1)
    else:
        m = mask.float().flatten(1)
        mse = torch.where(m.sum(1) > 0, (err * m).sum(1) / m.sum(1).clamp(min=1), torch.nan)
    return 10 * torch.log10(1.0 / mse)


def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-sample SSIM (Gaussian window 11, sigma 1.5; the standard constants), in [-1, 1]."""
    x, y = pred.float(), target.float()
    w = min(window, x.shape[-1], x.shape[-2])
    w -= 1 - w % 2
    g = torch.exp(-((torch.arange(w, device=x.device) - w // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).expand(x.shape[1], 1, w, w)

    def blur(t):
        return F.conv2d(t, k, groups=x.shape[1])

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def changed_mask(frame_t: torch.Tensor, frame_t1: torch.Tensor, threshold: float = 1 / 255) -> torch.Tensor:
    """(B, 1, H, W) pixels that changed between the frames (any channel by more than `threshold`)."""
    return ((frame_t.float() - frame_t1.float()).abs() >= threshold - 1e-6).any(dim=1, keepdim=True)


def perplexity(usage: torch.Tensor) -> float:
    """exp(entropy) of a usage histogram: k for k codes used equally, 1 for a collapsed codebook."""
    u = torch.as_tensor(usage, dtype=torch.float64)
    if float(u.sum()) <= 0:
        return float("nan")
    p = u / u.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))
