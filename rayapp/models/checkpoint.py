"""Policy checkpoints: a folder with `model.safetensors` (the weights) and `policy.json` (the model
arguments, the frame preprocessing, the game and action space, and the full config), so a network
can be rebuilt from the checkpoint alone (nanoGPT style). `--checkpoint` accepts such a folder, or a
run folder (its best checkpoint, recorded in `<stage>/best.json`).

Nothing here unpickles: checkpoints live on shared storage, and a pickle from there would run code
on every node that loads it. Checkpoints of earlier versions (one pickled `model.pt`) are refused
with a message naming `python -m rayapp.models.convert`, which rewrites them through torch's
restricted loader (`weights_only=True`: tensors and plain values only).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load, save

from rayapp.errors import RayappError, StorageError
from rayapp.frames import FrameSpec
from rayapp.models.nets import ModelSpec, PolicyNetwork, build_model
from rayapp.storage import delete, exists, read_bytes, resolve, write_bytes_atomic

__all__ = [
    "WEIGHTS_FILE",
    "POLICY_FILE",
    "LEGACY_FILE",
    "FORMAT",
    "PolicyCheckpoint",
    "LegacyCheckpointError",
    "save_policy",
    "load_policy",
    "resolve_checkpoint",
    "write_best",
    "check_compatible",
    "unwrap",
]

WEIGHTS_FILE = "model.safetensors"
POLICY_FILE = "policy.json"  # written last: a folder without it is not (yet) a checkpoint
LEGACY_FILE = "model.pt"  # rayapp.policy/1: everything in one pickle
FORMAT = "rayapp.policy/2"


class LegacyCheckpointError(RayappError):
    """A checkpoint in the old pickled format, which is not loaded."""

    def __init__(self, folder: str):
        super().__init__(
            f"{folder}: old checkpoint format ({LEGACY_FILE}, a pickle); rayapp no longer loads pickles "
            f"from storage because they can run code. Convert it once with `python -m rayapp.models.convert "
            f"{folder}` (reads tensors and plain values only, writes {WEIGHTS_FILE} + {POLICY_FILE}; give "
            f"it a run folder to convert every checkpoint in it), or train it again"
        )


@dataclass
class PolicyCheckpoint:
    path: str
    spec: ModelSpec
    frames: FrameSpec
    game: dict[str, Any]  # game, env_id, obs_shape, actions (labels per control), frame_rate
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)  # stage, epoch, metrics

    def model(self, device: str | torch.device = "cpu") -> PolicyNetwork:
        net = build_model(self.spec)
        net.load_state_dict(self.state_dict)
        return net.to(device).eval()

    def action_labels(self, control: int = 0) -> list[str]:
        labels = self.game.get("actions", [[]])[control]
        return labels or [str(i) for i in range(self.spec.controls[control][1])]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def weights_bytes(state: dict[str, torch.Tensor]) -> bytes:
    return save({k: v.detach().cpu().contiguous() for k, v in state.items()})


def write_checkpoint(folder: str, header: dict[str, Any], state: dict[str, torch.Tensor]) -> str:
    """The weights first, then `policy.json`: a reader never sees a description without weights."""
    loc = resolve(folder)
    write_bytes_atomic(loc.join(WEIGHTS_FILE), weights_bytes(state))
    write_bytes_atomic(
        loc.join(POLICY_FILE),
        (json.dumps({"format": FORMAT, **header}, indent=1, default=float) + "\n").encode(),
    )
    return loc.uri


def replace_checkpoint(folder: str, header: dict[str, Any], state: dict[str, torch.Tensor]) -> str:
    """A policy folder of its own, visible whole or not at all: locally written into a temporary
    sibling (`_tmp-...`, never a checkpoint) and renamed into place, replacing an earlier one as a
    whole; on object storage (no rename) an earlier `policy.json` is deleted first and the new one
    written last, so a reader sees no policy (not a mix) until the weights are in."""
    loc = resolve(folder)
    if not loc.is_local:
        delete(loc.join(POLICY_FILE))
        return write_checkpoint(folder, header, state)
    parent, name = os.path.split(loc.path)
    _remove_leftovers(parent, name)
    tmp = os.path.join(parent, f"_tmp-{uuid.uuid4().hex[:8]}-{name}")
    write_checkpoint(tmp, header, state)
    if os.path.exists(loc.path):
        old = os.path.join(parent, f"_old-{uuid.uuid4().hex[:8]}-{name}")
        os.rename(loc.path, old)
        os.rename(tmp, loc.path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, loc.path)
    return loc.uri


def _remove_leftovers(parent: str, name: str) -> None:
    """What an earlier export of this same folder left when it was killed mid-way: its temporary
    (`_tmp-<8 hex>-<name>`) and replaced (`_old-<8 hex>-<name>`) siblings; never loaded, only disk."""
    if not os.path.isdir(parent):
        return
    for entry in os.listdir(parent):
        kind, _, rest = entry.partition("-")
        tag, _, rest = rest.partition("-")
        if kind in ("_tmp", "_old") and len(tag) == 8 and rest == name:
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def save_policy(
    folder: str,
    model: torch.nn.Module,
    spec: ModelSpec,
    frames: FrameSpec,
    game: dict[str, Any],
    config: dict[str, Any],
    meta: dict[str, Any] | None = None,
    replace: bool = False,
) -> str:
    """`replace`: the folder holds this policy only and appears whole (`replace_checkpoint`);
    otherwise the files are added to `folder` (e.g. a Ray Train checkpoint being assembled)."""
    header = {
        "spec": spec.to_json(),
        "frames": frames.to_json(),
        "game": game,
        "config": config,
        "meta": meta or {},
    }
    write = replace_checkpoint if replace else write_checkpoint
    return write(folder, header, unwrap(model).state_dict())


def _unreadable(uri: str, e: Exception) -> RayappError:
    return RayappError(f"{uri}: not a readable rayapp checkpoint ({type(e).__name__}: {str(e)[:200]})")


def load_policy(path: str) -> PolicyCheckpoint:
    folder = resolve_checkpoint(path)
    loc = resolve(folder)
    try:
        header = json.loads(read_bytes(loc.join(POLICY_FILE)))
    except StorageError:
        raise
    except ValueError as e:
        raise _unreadable(loc.join(POLICY_FILE).uri, e) from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise RayappError(f"{loc.join(POLICY_FILE).uri}: not a rayapp policy checkpoint (format {FORMAT})")
    weights = loc.join(WEIGHTS_FILE)
    try:
        state = load(read_bytes(weights))  # a JSON header and raw tensor bytes: nothing to execute
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for any bad file
        raise _unreadable(weights.uri, e) from None
    try:
        return PolicyCheckpoint(
            path=folder,
            spec=ModelSpec.from_json(header["spec"]),
            frames=FrameSpec.from_json(header["frames"]),
            game=header["game"],
            config=header["config"],
            state_dict=state,
            meta=header.get("meta", {}),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise _unreadable(loc.join(POLICY_FILE).uri, e) from None


def write_best(run_dir: str, stage: str, checkpoint: str, metrics: dict[str, Any]) -> str:
    loc = resolve(run_dir).join(stage, "best.json")
    write_bytes_atomic(
        loc,
        (json.dumps({"checkpoint": checkpoint, "metrics": metrics}, indent=2, default=float) + "\n").encode(),
    )
    return loc.uri


def _is_checkpoint(loc) -> bool:
    if exists(loc.join(POLICY_FILE)):
        return True
    if exists(loc.join(LEGACY_FILE)):
        raise LegacyCheckpointError(loc.uri)
    return False


def resolve_checkpoint(path: str, stages: tuple[str, ...] = ("finetune", "pretrain")) -> str:
    """A checkpoint folder as is; a run folder -> the best checkpoint of its latest stage."""
    loc = resolve(path)
    if _is_checkpoint(loc):
        return loc.uri
    for stage in stages:
        best = loc.join(stage, "best.json")
        if exists(best):
            target = json.loads(read_bytes(best))["checkpoint"]
            if not _is_checkpoint(resolve(target)):
                raise RayappError(
                    f"{best.uri} points to {target}, which holds no {POLICY_FILE} (deleted or moved?)"
                )
            return target
    raise RayappError(
        f"no checkpoint at {path}: expected a checkpoint folder (with {POLICY_FILE}) or a run folder with "
        f"{' or '.join(s + '/best.json' for s in stages)}"
    )


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
