"""`PixelQModule`: RLlib's DQN RLModule around rayapp's own `PolicyNetwork`.

The network is the class behaviour cloning trains, so a BC checkpoint loads into the Q-network
(and, through RLlib's deep copy, the target network) with no shape juggling: the BC head's logits
become the initial Q-values (the weights are put in by `rayapp.rl.weights.load_into`).
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

__all__ = ["NEXT_OBS_1", "PixelQModule", "QF_NEXT_1_PREDS", "QF_TARGET_NEXT_1_PREDS"]

NEXT_OBS_1 = "next_obs_1"  # the one-step successor of a sampled transition (rayapp.rl.buffer)
QF_NEXT_1_PREDS = "qf_next_1_preds"
QF_TARGET_NEXT_1_PREDS = "qf_target_next_1_preds"


class PixelQModule(TorchRLModule, InferenceOnlyAPI, TargetNetworkAPI, QNetAPI):
    def setup(self) -> None:
        spec = ModelSpec.from_json(self.model_config["spec"])
        self.net = build_model(spec)
        self.epsilon_schedule = Scheduler(self.model_config["epsilon"], framework="torch")

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

    # RLlib's public extension points for acting are the `_forward_*` methods (TorchRLModule's
    # `forward_exploration`/`forward_inference` wrap them in eval()/train() and are not to be
    # overridden). Acting needs no gradients: RLlib calls these with autograd on, which makes every
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
        """Q(s), Q(s') for the n-step target and, with `next_obs_1` (the buffer's one-step
        successor), Q(s_t+1) for DQfD's 1-step target: one online and one target forward."""
        b = batch[Columns.OBS].shape[0]
        nxt = [batch[Columns.NEXT_OBS]] + ([batch[NEXT_OBS_1]] if NEXT_OBS_1 in batch else [])
        q = self.net(torch.cat([batch[Columns.OBS], *nxt], 0))[0]
        with torch.no_grad():
            target = self._target_net(torch.cat(nxt, 0))[0]
        out = {QF_PREDS: q[:b], QF_NEXT_PREDS: q[b : 2 * b], QF_TARGET_NEXT_PREDS: target[:b]}
        if len(nxt) > 1:
            out[QF_NEXT_1_PREDS], out[QF_TARGET_NEXT_1_PREDS] = q[2 * b :], target[b:]
        return out
