"""How well a latent action model explains frame pairs: the figures of validation, the test split
and `benchmarks/lam.py`, from sums that add up across batches and workers.

- PSNR of the predicted next frame, over the whole frame and over the pixels that changed between
  frame t and t+1, beside the "copy frame t" baseline (on Atari little changes, so the whole-frame
  PSNR is high for any model; the changed-pixel margin over copying is the honest figure);
- Genie's controllability, delta-PSNR: PSNR with the inferred codes minus PSNR with random codes
  (positive when the codes, not frame t alone, carry the change);
- SSIM, L1 and L2 of the prediction; the codebook usage of the inferred codes.

PSNR is per pair (peak 1.0), with the mean squared error floored at 1e-10 (100 dB) so that an
exact copy of a static pair counts as very good rather than infinite; a pair without changed
pixels has no changed-pixel PSNR and is left out of that mean.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from rayapp.models.lam import changed_mask, perplexity, ssim

__all__ = ["split_pair", "pair_sums", "add_sums", "finish_sums", "predictions"]

MSE_FLOOR = 1e-10


def split_pair(obs: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of 2-frame stacks (B, 2C, H, W) uint8 -> frame t, frame t+1 as floats in [0, 1]."""
    x = obs.float().div_(255.0)
    return x[:, :channels], x[:, channels:]


def _psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    err = (pred.float() - target.float()).pow(2)
    if mask is None:
        mse = err.flatten(1).mean(1)
    else:
        m = mask.float().flatten(1)
        n = m.sum(1)
        mse = (err.flatten(1) * m).sum(1) / n.clamp(min=1)
        mse = torch.where(n > 0, mse, torch.full_like(mse, float("nan")))
    return 10.0 * torch.log10(1.0 / mse.clamp(min=MSE_FLOOR))


@torch.no_grad()
def predictions(model, frame_t: torch.Tensor, frame_t1: torch.Tensor, generator=None):
    """(codes, prediction with the inferred codes, prediction with random codes)."""
    codes = model.encode(frame_t, frame_t1)
    pred = model.decode(frame_t, codes)
    rand = model.decode(frame_t, model.random_codes(len(frame_t), generator=generator).to(codes.device))
    return codes, pred.float().clamp(0, 1), rand.float().clamp(0, 1)


@torch.no_grad()
def pair_sums(model, frame_t: torch.Tensor, frame_t1: torch.Tensor, codes_n: int, generator=None) -> dict:
    """Sums over one batch (add them with `add_sums`, finish with `finish_sums`)."""
    codes, pred, rand = predictions(model, frame_t, frame_t1, generator)
    mask = changed_mask(frame_t, frame_t1)
    out: dict[str, Any] = {}

    def add(name: str, v: torch.Tensor) -> None:
        v = v.double()
        ok = torch.isfinite(v)
        out[name] = torch.stack([v[ok].sum(), ok.sum().double()])

    add("psnr", _psnr(pred, frame_t1))
    add("psnr_copy", _psnr(frame_t, frame_t1))
    add("psnr_random_code", _psnr(rand, frame_t1))
    add("psnr_changed", _psnr(pred, frame_t1, mask))
    add("psnr_changed_copy", _psnr(frame_t, frame_t1, mask))
    add("psnr_changed_random_code", _psnr(rand, frame_t1, mask))
    add("ssim", ssim(pred, frame_t1))
    add("l1", (pred - frame_t1).abs().flatten(1).mean(1))
    add("l2", (pred - frame_t1).pow(2).flatten(1).mean(1))
    add("changed_fraction", mask.float().flatten(1).mean(1))
    out["usage"] = torch.bincount(codes.reshape(-1).long(), minlength=codes_n).double()
    return out


def add_sums(a: dict | None, b: dict) -> dict:
    if a is None:
        return {k: v.clone() for k, v in b.items()}
    for k, v in b.items():
        a[k] += v
    return a


def finish_sums(s: dict, prefix: str) -> dict[str, float]:
    """Means, the margins over the baselines, and the codebook usage figures."""
    m: dict[str, float] = {}
    for k, v in s.items():
        if k != "usage":
            m[f"{prefix}/{k}"] = float(v[0] / v[1]) if float(v[1]) else math.nan
    m[f"{prefix}/psnr_gain_over_copy"] = m[f"{prefix}/psnr"] - m[f"{prefix}/psnr_copy"]
    m[f"{prefix}/psnr_changed_gain_over_copy"] = m[f"{prefix}/psnr_changed"] - m[f"{prefix}/psnr_changed_copy"]
    m[f"{prefix}/delta_psnr"] = m[f"{prefix}/psnr"] - m[f"{prefix}/psnr_random_code"]
    m[f"{prefix}/delta_psnr_changed"] = m[f"{prefix}/psnr_changed"] - m[f"{prefix}/psnr_changed_random_code"]
    usage = s["usage"]
    m[f"{prefix}/codes_used"] = int((usage > 0).sum())
    m[f"{prefix}/codebook_usage"] = float((usage > 0).double().mean())
    m[f"{prefix}/perplexity"] = float(perplexity(usage))
    return m
