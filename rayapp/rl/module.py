"""`PixelQModule`: RLlib's DQN RLModule around rayapp's own `PolicyNetwork`.

The network is the class behaviour cloning trains, so a BC checkpoint loads into the Q-network
(and, through RLlib's deep copy, the target network) with no shape juggling: the BC head's logits
become the initial Q-values (the weights are put in by `rayapp.rl.finetune.load_into`).
`model_config` carries the ModelSpec; DQN's own keys (epsilon schedule, double_q, ...) are merged
in by RLlib.
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.algorithms.dqn.dqn_learner import QF_NEXT_PREDS, QF_PREDS, QF_TARGET_NEXT_PREDS
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.utils import make_target_network
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI, QNetAPI, TargetNetworkAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.utils.schedules.scheduler import Scheduler

from rayapp.models.nets import ModelSpec, build_model

__all__ = ["PixelQModule"]


class PixelQModule(TorchRLModule, InferenceOnlyAPI, TargetNetworkAPI, QNetAPI):
    def setup(self) -> None:
        if not self.model_config.get("deterministic", False):
            # RLlib's `debugging(seed=...)` turns on torch's deterministic algorithms when there is no
            # CUDA; on CPU that also fills every new tensor with NaN first, which made acting here
            # about 2x slower. Seeds (envs, torch, numpy) stay; only the deterministic kernels go.
            torch.use_deterministic_algorithms(False)
        spec = ModelSpec.from_json(self.model_config["spec"])
        self.net = build_model(spec)
        self.epsilon_schedule = Scheduler(self.model_config["epsilon"], framework="torch")
        # layers that act differently in train and eval mode; rayapp's networks have none, so
        # acting need not flip the whole module to eval and back on every step
        mode_layers = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.dropout._DropoutNd)
        self._mode_dependent = any(isinstance(m, mode_layers) for m in self.net.modules())

    # ---- target network ------------------------------------------------------------------------
    def get_non_inference_attributes(self) -> list[str]:
        return ["_target_net"]

    def make_target_networks(self) -> None:
        self._target_net = make_target_network(self.net)

    def get_target_network_pairs(self):
        return [(self.net, self._target_net)]

    def forward_target(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {QF_PREDS: self._target_net(batch[Columns.OBS])[0]}

    # ---- Q-values and acting -------------------------------------------------------------------
    def compute_q_values(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {QF_PREDS: self.net(batch[Columns.OBS])[0]}

    # TorchRLModule's forward_exploration/inference call eval() then train() on every module of
    # the network around each call: 2.5% of an env runner's time here, for nothing without
    # batch-norm or dropout.
    def forward_exploration(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        if self._mode_dependent:
            return super().forward_exploration(batch, **kwargs)
        return self._forward_exploration(batch, **kwargs)

    def forward_inference(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        if self._mode_dependent:
            return super().forward_inference(batch, **kwargs)
        return self._forward_inference(batch, **kwargs)

    # Acting needs no gradients: RLlib's env runners call these with autograd on, which makes every
    # forward keep its activations (about 2x slower on CPU here).
    @torch.no_grad()
    def _forward_inference(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return {Columns.ACTIONS: self.compute_q_values(batch)[QF_PREDS].argmax(-1)}

    @torch.no_grad()
    def _forward_exploration(self, batch: dict[str, Any], t: int = 0, **kwargs) -> dict[str, Any]:
        q = self.compute_q_values(batch)[QF_PREDS]
        self.epsilon_schedule.update(t)
        eps = self.epsilon_schedule.get_current_value()
        greedy = q.argmax(-1)
        rnd = torch.randint(0, q.shape[-1], greedy.shape, device=q.device)
        return {Columns.ACTIONS: torch.where(torch.rand(greedy.shape, device=q.device) < eps, rnd, greedy)}

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        b = batch[Columns.OBS].shape[0]
        q = self.net(torch.cat([batch[Columns.OBS], batch[Columns.NEXT_OBS]], 0))[0]
        with torch.no_grad():
            target_next = self._target_net(batch[Columns.NEXT_OBS])[0]
        return {QF_PREDS: q[:b], QF_NEXT_PREDS: q[b:], QF_TARGET_NEXT_PREDS: target_next}
