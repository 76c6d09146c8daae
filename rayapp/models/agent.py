"""A trained policy acting on stacked frames: the piece evaluation, recording and the live player share."""

from __future__ import annotations

import numpy as np

from rayapp.models.checkpoint import PolicyCheckpoint, load_policy

__all__ = ["Agent", "Q_EPSILON", "is_q_network", "mode_label"]

Q_EPSILON = 0.05  # the usual Atari evaluation epsilon of a Q-network (Dopamine uses 0.001)


def is_q_network(ckpt: PolicyCheckpoint) -> bool:
    """Whether the network's outputs are Q-values (a policy exported by `rayapp finetune`, meta
    stage "finetune") rather than a policy's logits (behaviour cloning, stage "pretrain")."""
    return ckpt.meta.get("stage") == "finetune"


def mode_label(ckpt: PolicyCheckpoint, mode: str, epsilon: float = 0.0, q_epsilon: float = Q_EPSILON) -> str:
    """What `mode` means for this network, as eval.json and the report show it."""
    if mode == "sampled":
        return f"sampled (epsilon-greedy {q_epsilon:g})" if is_q_network(ckpt) else "sampled (softmax)"
    return f"greedy (epsilon {epsilon:g})" if epsilon else "greedy"


class Agent:
    """A checkpoint choosing actions from stacked observations.

    greedy: argmax, with a random action at probability `epsilon`. sampled: for a policy (BC),
    an action drawn from its softmax; for a Q-network (a fine-tuned policy), epsilon-greedy at
    `q_epsilon` (a softmax over Q-values is no policy the agent was trained to be). A recurrent
    network keeps its state within an episode and starts from zeros every `data.clip_length`
    steps, as it was trained."""

    def __init__(
        self,
        checkpoint: str | PolicyCheckpoint,
        mode: str = "greedy",
        epsilon: float = 0.0,
        seed: int = 0,
        threads: int = 1,
        q_epsilon: float = Q_EPSILON,
    ):
        import torch

        torch.set_num_threads(threads)
        self.ckpt = checkpoint if isinstance(checkpoint, PolicyCheckpoint) else load_policy(checkpoint)
        self.model = self.ckpt.model()
        self.mode = mode
        self.softmax = mode == "sampled" and not is_q_network(self.ckpt)
        self.epsilon = q_epsilon if mode == "sampled" and not self.softmax else epsilon
        self.label = mode_label(self.ckpt, mode, epsilon, q_epsilon)
        self.rng = np.random.default_rng(seed)
        self.clip = int(self.ckpt.config.get("data", {}).get("clip_length", 0) or 0)
        self.state = None
        self.t = 0
        self.last_outputs: list[np.ndarray] = []  # the network's raw outputs of the last act (per control)

    def load_state_dict(self, state: dict) -> None:
        """Swap in new weights (the live player's hot reload)."""
        self.model.load_state_dict(state)

    def reset(self) -> None:
        self.state, self.t = None, 0

    def act(self, obs: np.ndarray) -> int | list[int]:
        import torch

        x = torch.from_numpy(obs)[None]
        if self.ckpt.spec.recurrent:
            if self.clip and self.t % self.clip == 0:
                self.state = None
            x = x[None]
        with torch.no_grad():
            outputs, self.state = self.model.step(x, self.state)
        self.t += 1
        self.last_outputs = [out.reshape(-1).numpy() for out in outputs]
        acts = []
        for out in outputs:
            logits = out.reshape(-1)
            if self.softmax:
                p = torch.softmax(logits.double(), 0).numpy()
                acts.append(int(self.rng.choice(len(p), p=p / p.sum())))
            elif self.epsilon and self.rng.random() < self.epsilon:
                acts.append(int(self.rng.integers(len(logits))))
            else:
                acts.append(int(logits.argmax()))
        return acts[0] if len(acts) == 1 else acts
