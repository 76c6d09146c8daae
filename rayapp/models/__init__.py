"""Torch networks shared by behaviour cloning, DQN and the player, and their checkpoints."""

from rayapp.models.agent import Agent
from rayapp.models.checkpoint import PolicyCheckpoint, load_policy, resolve_checkpoint, save_policy
from rayapp.models.nets import ModelSpec, NatureCNN, PolicyNetwork, build_model

__all__ = [
    "Agent",
    "ModelSpec",
    "NatureCNN",
    "PolicyCheckpoint",
    "PolicyNetwork",
    "build_model",
    "load_policy",
    "resolve_checkpoint",
    "save_policy",
]
