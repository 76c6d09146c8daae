"""The torch networks shared by behaviour cloning, DQN and the live player.

`PolicyNetwork` = an encoder (the Nature DQN CNN) -> optionally an LSTM over time -> one linear
head per discrete control. BC reads the heads' outputs as logits, DQN as Q-values: a BC checkpoint
loads into DQN's Q-network unchanged, and its heads become the initial Q-heads.

Inputs are uint8 frames (B, C, H, W), or (B, T, C, H, W) for the recurrent variant; the network
divides by 255 itself, so replay buffers and batches stay uint8 (4x smaller than float32).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["ModelSpec", "NatureCNN", "PolicyNetwork", "build_model"]


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network: saved in every checkpoint."""

    input_shape: tuple[int, int, int]  # (channels x frame_stack, height, width)
    controls: tuple[tuple[str, int], ...]  # (name, number of actions) per head
    arch: str = "cnn"  # "cnn" or "cnn_lstm"
    hidden: int = 512
    lstm_hidden: int = 256
    dueling: bool = False  # outputs V(s) + A(s, a) - mean_a A(s, a); A is the head BC trains
    center: bool = False  # the encoder subtracts a mean frame (`encoder.input_mean`, in the weights)

    @property
    def recurrent(self) -> bool:
        return self.arch == "cnn_lstm"

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["controls"] = [list(c) for c in self.controls]
        return d

    @staticmethod
    def from_json(d: dict[str, Any]) -> ModelSpec:
        return ModelSpec(
            input_shape=tuple(int(x) for x in d["input_shape"]),
            controls=tuple((str(n), int(k)) for n, k in d["controls"]),
            arch=d.get("arch", "cnn"),
            hidden=int(d.get("hidden", 512)),
            lstm_hidden=int(d.get("lstm_hidden", 256)),
            dueling=bool(d.get("dueling", False)),
            center=bool(d.get("center", False)),  # checkpoints before it: inputs not centred
        )

    def describe(self) -> str:
        heads = ", ".join(f"{n}:{k}" for n, k in self.controls)
        return f"{self.arch}{' (dueling)' if self.dueling else ''}{' (centred)' if self.center else ''} on {'x'.join(map(str, self.input_shape))} inputs, heads [{heads}]"


def _conv_out(shape: tuple[int, int, int], net: nn.Module) -> int:
    with torch.no_grad():
        return int(net(torch.zeros(1, *shape)).shape[1])


class NatureCNN(nn.Module):
    """Mnih et al. 2015: 32x8x8/4 -> 64x4x4/2 -> 64x3x3/1 -> fully connected (3,136 -> 512 on 84x84).

    Inputs are uint8 frames scaled to [0, 1] (or floats already on that scale). With `center`, a
    mean frame is subtracted first: a buffer (`input_mean`, zeros until `rayapp pretrain` fills it
    from the training split) that travels with the weights into every copy of the network: the
    checkpoint, RLlib's Q- and target networks, the env runners, `rayapp play`.
    """

    def __init__(self, input_shape: tuple[int, int, int], hidden: int = 512, center: bool = False):
        super().__init__()
        c = input_shape[0]
        if center:
            self.register_buffer("input_mean", torch.zeros(tuple(input_shape)))
        self.conv = nn.Sequential(
            nn.Conv2d(c, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.fc = nn.Sequential(nn.Linear(_conv_out(input_shape, self.conv), hidden), nn.ReLU())
        self.out_features = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self._buffers.get("input_mean")
        if x.dtype == torch.uint8:
            x = self._scaled(x)  # a tensor of our own: centred in place, no second allocation per batch
            if mean is not None:
                x.sub_(mean)
        elif mean is not None:  # the caller's tensor: left as it is
            x = x - mean
        return self.fc(self.conv(x))

    def _scaled(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 frames -> float32 in [0, 1]. Without autograd (acting), into a buffer kept between
        calls: a fresh 3.6 MB tensor per 8-frame batch cost ~2 ms of page faults in Ray's env
        runners on this machine, more than the network's own compute."""
        if torch.is_grad_enabled():
            return torch.empty(x.shape, dtype=torch.float32, device=x.device).copy_(x).mul_(1.0 / 255.0)
        buf = self.__dict__.get("_input_buffer")
        if buf is None or buf.shape != x.shape or buf.device != x.device:
            buf = torch.empty(x.shape, dtype=torch.float32, device=x.device)
            self.__dict__["_input_buffer"] = buf
        return buf.copy_(x).mul_(1.0 / 255.0)


class PolicyNetwork(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.encoder = NatureCNN(spec.input_shape, spec.hidden, spec.center)
        features = spec.hidden
        self.lstm = None
        if spec.recurrent:
            self.lstm = nn.LSTM(spec.hidden, spec.lstm_hidden, batch_first=True)
            features = spec.lstm_hidden
        self.heads = nn.ModuleList(nn.Linear(features, n) for _, n in spec.controls)
        self.value = None
        if spec.dueling:
            # starts at zero: a network made dueling from a BC checkpoint acts exactly as BC did
            self.value = nn.Linear(features, 1)
            nn.init.zeros_(self.value.weight)
            nn.init.zeros_(self.value.bias)

    def _outputs(self, z: torch.Tensor) -> list[torch.Tensor]:
        outs = [h(z) for h in self.heads]
        if self.value is None:
            return outs
        v = self.value(z)
        return [v + a - a.mean(-1, keepdim=True) for a in outs]

    def features(self, obs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Encoder (+ LSTM) output: (B, F), or (B, T, F) and the new state for the recurrent net."""
        if self.lstm is None:
            return self.encoder(obs), None
        b, t = obs.shape[:2]
        z = self.encoder(obs.reshape(b * t, *obs.shape[2:])).reshape(b, t, -1)
        out, state = self.lstm(z, state)  # state None: each clip starts from zeros
        return out, state

    def forward(
        self, obs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        """One output tensor per control: (B, n) logits/Q-values, or (B, T, n) for the recurrent net."""
        z, _ = self.features(obs, state)
        return self._outputs(z)

    def step(self, obs: torch.Tensor, state=None):
        """Outputs and the new recurrent state (the player and evaluation call this step by step)."""
        z, state = self.features(obs, state)
        return self._outputs(z), state


def build_model(spec: ModelSpec) -> PolicyNetwork:
    if spec.arch not in ("cnn", "cnn_lstm"):
        raise ValueError(f"unknown model.arch {spec.arch!r} (cnn, cnn_lstm)")
    return PolicyNetwork(spec)
