"""Policy checkpoints: a folder with `model.pt` holding the weights, the model arguments, the frame
preprocessing, the game and action space, and the full config, so a network can be rebuilt from
the checkpoint alone (nanoGPT style). `--checkpoint` accepts such a folder, or a run folder (its
best checkpoint, recorded in `<stage>/best.json`)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import torch

from rayapp.errors import RayappError, StorageError
from rayapp.frames import FrameSpec
from rayapp.models.nets import ModelSpec, PolicyNetwork, build_model
from rayapp.storage import exists, read_bytes, resolve, write_bytes_atomic

__all__ = [
    "MODEL_FILE",
    "PolicyCheckpoint",
    "save_policy",
    "load_policy",
    "resolve_checkpoint",
    "write_best",
    "state_bytes",
    "check_compatible",
]

MODEL_FILE = "model.pt"


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


def state_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def save_policy(
    folder: str,
    model: torch.nn.Module,
    spec: ModelSpec,
    frames: FrameSpec,
    game: dict[str, Any],
    config: dict[str, Any],
    meta: dict[str, Any] | None = None,
) -> str:
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    payload = {"format": "rayapp.policy/1", "spec": spec.to_json(), "frames": frames.to_json(), "game": game,
               "config": config, "meta": meta or {}, "state_dict": state}  # fmt: skip
    loc = resolve(folder).join(MODEL_FILE)
    write_bytes_atomic(loc, state_bytes(payload))
    return loc.uri


def load_policy(path: str) -> PolicyCheckpoint:
    folder = resolve_checkpoint(path)
    loc = resolve(folder).join(MODEL_FILE)
    try:
        payload = torch.load(io.BytesIO(read_bytes(loc)), map_location="cpu", weights_only=False)
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged file of any kind
        raise RayappError(f"{loc.uri}: not a readable rayapp checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != "rayapp.policy/1":
        raise RayappError(f"{loc.uri}: not a rayapp policy checkpoint")
    return PolicyCheckpoint(
        path=folder,
        spec=ModelSpec.from_json(payload["spec"]),
        frames=FrameSpec.from_json(payload["frames"]),
        game=payload["game"],
        config=payload["config"],
        state_dict=payload["state_dict"],
        meta=payload.get("meta", {}),
    )


def write_best(run_dir: str, stage: str, checkpoint: str, metrics: dict[str, Any]) -> str:
    loc = resolve(run_dir).join(stage, "best.json")
    write_bytes_atomic(
        loc,
        (json.dumps({"checkpoint": checkpoint, "metrics": metrics}, indent=2, default=float) + "\n").encode(),
    )
    return loc.uri


def resolve_checkpoint(path: str, stages: tuple[str, ...] = ("finetune", "pretrain")) -> str:
    """A checkpoint folder as is; a run folder -> the best checkpoint of its latest stage."""
    loc = resolve(path)
    if exists(loc.join(MODEL_FILE)):
        return loc.uri
    for stage in stages:
        best = loc.join(stage, "best.json")
        if exists(best):
            target = json.loads(read_bytes(best))["checkpoint"]
            if not exists(resolve(target).join(MODEL_FILE)):
                raise RayappError(
                    f"{best.uri} points to {target}, which holds no {MODEL_FILE} (deleted or moved?)"
                )
            return target
    raise RayappError(
        f"no checkpoint at {path}: expected a checkpoint folder (with {MODEL_FILE}) or a run folder with "
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
