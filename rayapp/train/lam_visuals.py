"""Pictures of a latent action model at work: reconstructions beside their targets with
difference heat maps (TensorBoard images during training), and the metrics logger that also takes
images and histograms."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from rayapp.metrics import MetricsLogger

__all__ = ["to_rgb_uint8", "heat_map", "reconstruction_grid", "LamLogger"]


def to_rgb_uint8(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] (C = 1 or 3) -> (N, H, W, 3) uint8."""
    x = frames.detach().float().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    x = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def heat_map(a: torch.Tensor, b: torch.Tensor, scale: float = 4.0) -> np.ndarray:
    """|a - b| averaged over channels, amplified by `scale`, as (N, H, W, 3) RGB (the 'inferno' map)."""
    d = (a.float() - b.float()).abs().mean(1).mul(scale).clamp(0, 1).cpu().numpy()
    g = (d * 255 + 0.5).astype(np.uint8)
    out = np.stack([cv2.applyColorMap(x, cv2.COLORMAP_INFERNO) for x in g])
    return out[..., ::-1].copy()  # BGR -> RGB


def reconstruction_grid(
    frame_t: torch.Tensor, frame_t1: torch.Tensor, pred: torch.Tensor, n: int = 8, gap: int = 2
) -> np.ndarray:
    """One row per pair: frame t | frame t+1 | predicted t+1 | |predicted - true| | |t+1 - t|."""
    n = min(n, len(frame_t))
    cols = [
        to_rgb_uint8(frame_t[:n]),
        to_rgb_uint8(frame_t1[:n]),
        to_rgb_uint8(pred[:n]),
        heat_map(pred[:n], frame_t1[:n]),
        heat_map(frame_t1[:n], frame_t[:n]),
    ]
    h, w = cols[0].shape[1:3]
    grid = np.full((n * (h + gap) - gap, len(cols) * (w + gap) - gap, 3), 255, np.uint8)
    for r in range(n):
        for c, col in enumerate(cols):
            grid[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = col[r]
    return grid


class LamLogger(MetricsLogger):
    """`MetricsLogger` (CSV + TensorBoard scalars in the run folder, uploaded on object storage)
    with images and histograms as well."""

    def image(self, tag: str, img: np.ndarray, step: int) -> None:
        tb = self._writer()
        tb.add_image(tag, img, step, dataformats="HWC")
        tb.flush()
        if not self.loc.is_local:
            self._upload()

    def histogram(self, tag: str, counts: np.ndarray, step: int) -> None:
        """A histogram of code indices from their counts (index i repeated counts[i] times)."""
        counts = np.asarray(counts, np.float64)
        tb = self._writer()
        edges = np.arange(len(counts) + 1, dtype=np.float64) - 0.5
        total = counts.sum()
        if total <= 0:
            return
        idx = np.arange(len(counts), dtype=np.float64)
        tb.add_histogram_raw(
            tag,
            min=float(idx[counts > 0].min()),
            max=float(idx[counts > 0].max()),
            num=float(total),
            sum=float((idx * counts).sum()),
            sum_squares=float((idx * idx * counts).sum()),
            bucket_limits=edges[1:].tolist(),
            bucket_counts=counts.tolist(),
            global_step=step,
        )
        tb.flush()
