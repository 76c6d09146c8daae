"""`rayapp lam dream`: the decoder as a latent-conditioned next-frame predictor, rolled forward.

    rayapp lam dream --checkpoint runs/lam --set data.uri=runs/breakout/replays --codes 3 3 3 7 7 7

From the first frame of an episode of `data.uri` (its test split when it has one), the model
predicts the next frame from its own last prediction, `lam.dream_steps` times. The GIF shows three
panels side by side: the real episode | the dream under the codes the model infers from the real
pairs (how far an open-loop rollout stays on track) | the dream under the chosen codes (`--codes`,
`lam.dream_codes`, repeated to fill the steps; random codes when none are given). With several
latent positions a code is their joint code (codes ** positions of them).
"""

from __future__ import annotations

import numpy as np
import torch

from rayapp.config import Config
from rayapp.data.index import DatasetIndex
from rayapp.errors import RayappError
from rayapp.frames import Preprocessor
from rayapp.models.lam_checkpoint import load_lam
from rayapp.replay.reader import ReplayDataset
from rayapp.storage import join, resolve, write_bytes_atomic
from rayapp.train.lam_visuals import to_rgb_uint8

__all__ = ["dream", "rollout", "split_joint"]


def split_joint(code: int, n_codes: int, positions: int) -> list[int]:
    """A joint code -> one code per position (the inverse of rayapp.models.lam.joint_code)."""
    if not 0 <= code < n_codes**positions:
        raise RayappError(f"code {code} is outside 0..{n_codes**positions - 1} ({n_codes} codes at {positions} positions)")
    out = []
    for _ in range(positions):
        code, r = divmod(code, n_codes)
        out.append(r)
    return out[::-1]


@torch.no_grad()
def rollout(model, first: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) start frame, (T, P) codes -> (T + 1, C, H, W) frames, each predicted from the last."""
    frames = [first]
    for t in range(len(codes)):
        frames.append(model.decode(frames[-1], codes[t : t + 1]).float().clamp(0, 1))
    return torch.cat(frames)


def dream(cfg: Config, out: str | None = None, codes: list[int] | None = None) -> str:
    ck = load_lam(cfg.lam.checkpoint or cfg.run.dir)
    model, spec = ck.model(), ck.spec
    ds = ReplayDataset(cfg.data_uri)
    index = DatasetIndex.build(ds, None, cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.split_seed)
    test = set(index.episodes("test")) or set(index.episode_rows)
    n = cfg.lam.dream_steps
    episode = next((e for e in ds.iter_episodes(extras=()) if e.episode_id in test and e.length > 1), None)
    if episode is None:
        raise RayappError(f"{ds.uri} has no episode of two frames or more to dream from")
    pre = Preprocessor(ck.frames, ds.info.observation.shape)
    real = torch.from_numpy(pre(episode.obs[: n + 1])).float().div_(255.0)
    inferred = model.encode(real[:-1], real[1:])
    given = codes or cfg.lam.dream_codes
    if given:
        chosen = torch.tensor([split_joint(int(c), spec.codes, spec.n_positions) for c in given])
        chosen = chosen.repeat((n + len(chosen) - 1) // len(chosen), 1)[:n]
    else:
        chosen = model.random_codes(n, generator=torch.Generator().manual_seed(cfg.run.seed))
    panels = [real, rollout(model, real[:1], inferred), rollout(model, real[:1], chosen)]
    length = min(len(p) for p in panels)
    strip = np.concatenate([to_rgb_uint8(p[:length]) for p in panels], axis=2)
    target = out or join(cfg.run.dir, "lam", "dream.gif")
    import imageio.v3 as iio

    data = iio.imwrite("<bytes>", strip, extension=".gif", duration=1000 / max(1.0, ds.info.frame_rate or 15), loop=0)
    write_bytes_atomic(resolve(target), data)
    return (f"dreamed {length - 1} steps from {episode.episode_id} of {ds.uri} with {ck.path}: {target} "
            f"(real | inferred codes | {'codes ' + ' '.join(map(str, given)) if given else 'random codes'})")  # fmt: skip
