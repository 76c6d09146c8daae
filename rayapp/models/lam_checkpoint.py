"""Latent action model checkpoints: a folder with `lam.safetensors` (the weights) and `lam.json`
(the model arguments, the frame preprocessing, the game, the full config and the step), so the
model can be rebuilt from the checkpoint alone, like a policy checkpoint (`rayapp.models.checkpoint`).

`--checkpoint` / `lam.checkpoint` accept such a folder or a run folder (its best LAM checkpoint,
named by `<run.dir>/lam/best.json`: the lowest validation reconstruction loss).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load

from rayapp.errors import RayappError, StorageError
from rayapp.frames import FrameSpec
from rayapp.models.checkpoint import unwrap, weights_bytes
from rayapp.models.lam import LamSpec, LatentActionModel
from rayapp.storage import exists, read_bytes, resolve, write_bytes_atomic

__all__ = ["LAM_WEIGHTS", "LAM_FILE", "LAM_FORMAT", "LamCheckpoint", "save_lam", "load_lam", "resolve_lam"]

LAM_WEIGHTS = "lam.safetensors"
LAM_FILE = "lam.json"  # written last: a folder without it is not (yet) a checkpoint
LAM_FORMAT = "rayapp.lam/1"


@dataclass
class LamCheckpoint:
    path: str
    spec: LamSpec
    frames: FrameSpec  # what one frame of a pair looks like (frame_stack 2: the pair)
    game: dict[str, Any]
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)  # step, metrics

    def model(self, device: str | torch.device = "cpu") -> LatentActionModel:
        net = LatentActionModel(self.spec)
        net.load_state_dict(self.state_dict)
        return net.to(device).eval()


def save_lam(
    folder: str,
    model: torch.nn.Module,
    spec: LamSpec,
    frames: FrameSpec,
    game: dict[str, Any],
    config: dict[str, Any],
    meta: dict[str, Any] | None = None,
) -> str:
    """The weights first, then `lam.json`: a reader never sees a description without weights."""
    loc = resolve(folder)
    write_bytes_atomic(loc.join(LAM_WEIGHTS), weights_bytes(unwrap(model).state_dict()))
    header = {
        "format": LAM_FORMAT,
        "spec": spec.to_json(),
        "frames": frames.to_json(),
        "game": game,
        "config": config,
        "meta": meta or {},
    }
    write_bytes_atomic(loc.join(LAM_FILE), (json.dumps(header, indent=1, default=float) + "\n").encode())
    return loc.uri


def resolve_lam(path: str) -> str:
    """A LAM checkpoint folder as is; a run folder -> its best LAM checkpoint (`lam/best.json`)."""
    loc = resolve(path)
    if exists(loc.join(LAM_FILE)):
        return loc.uri
    best = loc.join("lam", "best.json")
    if exists(best):
        target = json.loads(read_bytes(best))["checkpoint"]
        if not exists(resolve(target).join(LAM_FILE)):
            raise RayappError(f"{best.uri} points to {target}, which holds no {LAM_FILE} (deleted or moved?)")
        return target
    raise RayappError(
        f"no latent action model at {path}: expected a checkpoint folder (with {LAM_FILE}) or a run folder "
        "with lam/best.json (train one with `rayapp lam train`)"
    )


def load_lam(path: str) -> LamCheckpoint:
    folder = resolve_lam(path)
    loc = resolve(folder)
    where = loc.join(LAM_FILE).uri
    try:
        header = json.loads(read_bytes(loc.join(LAM_FILE)))
    except StorageError:
        raise
    except ValueError as e:
        raise RayappError(f"{where}: not readable JSON ({e})") from None
    if not isinstance(header, dict) or header.get("format") != LAM_FORMAT:
        raise RayappError(f"{where}: not a rayapp latent action model checkpoint (format {LAM_FORMAT})")
    try:
        state = load(read_bytes(loc.join(LAM_WEIGHTS)))  # raw tensors: nothing to execute
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for any bad file
        raise RayappError(f"{loc.join(LAM_WEIGHTS).uri}: unreadable weights ({type(e).__name__}: {e})") from None
    try:
        return LamCheckpoint(
            path=folder,
            spec=LamSpec.from_json(header["spec"]),
            frames=FrameSpec.from_json(header["frames"]),
            game=header["game"],
            config=header["config"],
            state_dict=state,
            meta=header.get("meta", {}),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise RayappError(f"{where}: malformed ({type(e).__name__}: {e})") from None
