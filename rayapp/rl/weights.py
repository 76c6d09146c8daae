"""The Q-network's weights: the BC policy fine-tuning starts from, put into RLlib's learner and
target network, and taken out again as an exported policy (`rayapp evaluate` and the player load
it). RLlib's public learner-group weights API only (`get_weights` / `set_weights`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from rayapp.config import Config, config_to_dict
from rayapp.errors import RayappError
from rayapp.frames import FrameSpec
from rayapp.models.checkpoint import PolicyCheckpoint, load_policy, resolve_checkpoint, save_policy
from rayapp.models.nets import ModelSpec, build_model
from rayapp.storage import resolve

__all__ = ["init_policy", "q_spec", "module_state", "load_into", "export_policy"]


def init_policy(cfg: Config) -> PolicyCheckpoint | None:
    """The BC policy fine-tuning starts from (None: DQN from scratch)."""
    src = cfg.finetune.init_checkpoint
    if src.lower() == "none":
        return None

    path = resolve_checkpoint(src or cfg.run.dir, stages=("pretrain",))
    pol = load_policy(path)
    if pol.spec.recurrent or len(pol.spec.controls) != 1:
        raise RayappError(
            f"{path}: DQN fine-tuning needs a feed-forward network with one discrete head, got {pol.spec.describe()}"
        )
    return pol


def q_spec(cfg: Config, spec: ModelSpec) -> ModelSpec:
    """The Q-network's spec for a BC network: the same layers, plus a value head when `finetune.dueling`."""
    return dataclasses.replace(spec, dueling=cfg.finetune.dueling or spec.dueling)


def module_state(algo) -> dict[str, np.ndarray]:
    """The learner's Q-network weights as a PolicyNetwork state dict."""
    weights = algo.learner_group.get_weights()["default_policy"]
    return {k[len("net.") :]: v for k, v in weights.items() if k.startswith("net.")}


def load_into(algo, state: dict[str, Any]) -> None:
    """Put PolicyNetwork weights into the Q-network and the target network, and the env runners.

    A dueling Q-network keeps its value head (zero at the start) when the weights come from a
    network without one: Q(s, .) starts as the BC logits, centred, and acts as BC did."""
    weights = algo.learner_group.get_weights()
    mod = weights["default_policy"]
    missing = [k[len("net.") :] for k in mod if k.startswith("net.") and k[len("net.") :] not in state]
    if any(not k.startswith("value.") for k in missing):
        raise RayappError(f"the BC network lacks weights the Q-module needs: {missing[:5]}")
    for k, v in state.items():
        v = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
        for prefix in ("net.", "_target_net."):
            if prefix + k not in mod:
                raise RayappError(f"weight {k} of the BC network has no place in the Q-module")
            if mod[prefix + k].shape != v.shape:
                raise RayappError(f"weight {k}: shape {v.shape} vs {mod[prefix + k].shape} in the Q-module")
            mod[prefix + k] = v
    algo.learner_group.set_weights(weights)
    algo.sync_env_runners()


def export_policy(
    algo, folder: str, spec: ModelSpec, frames: FrameSpec, game: dict, cfg: Config, meta: dict
) -> str:
    import torch

    net = build_model(spec)
    net.load_state_dict({k: torch.as_tensor(v) for k, v in module_state(algo).items()})
    save_policy(folder, net, spec, frames, game, config_to_dict(cfg), meta, replace=True)
    return resolve(folder).uri
