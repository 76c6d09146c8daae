"""DQN's learner plus the DQfD large-margin loss (Hester et al. 2018) on demonstration steps:

    J_E(Q) = max_a [ Q(s, a) + l(a_E, a) ] - Q(s, a_E),   l = margin for a != a_E, 0 otherwise

averaged over the demonstration rows of the batch (column `is_demo`, tagged by the algorithm),
weighted by `margin_weight` (0 turns it off). With `margin_only`, the TD loss is dropped: imitation
data without rewards can still shape the Q-function.
"""

from __future__ import annotations

import torch
from ray.rllib.algorithms.dqn.dqn_learner import QF_PREDS
from ray.rllib.algorithms.dqn.torch.dqn_torch_learner import DQNTorchLearner
from ray.rllib.core.columns import Columns

__all__ = ["DQfDTorchLearner", "margin_loss"]


def margin_loss(q: torch.Tensor, actions: torch.Tensor, is_demo: torch.Tensor, margin: float) -> torch.Tensor:
    a = actions.long()
    margins = torch.full_like(q, margin).scatter(1, a[:, None], 0.0)
    je = (q + margins).max(1).values - q.gather(1, a[:, None]).squeeze(1)
    d = is_demo.float()
    return (je * d).sum() / d.sum().clamp(min=1.0)


class DQfDTorchLearner(DQNTorchLearner):
    """Also leaner on CPU than the stock learner: a foreach Adam and one fused gradient-norm pass
    (clip + finiteness) instead of a Python loop of per-parameter checks (see benchmarks/finetune.py)."""

    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        params = self.get_parameters(self._module[module_id])
        self.register_optimizer(
            module_id=module_id,
            optimizer=torch.optim.Adam(params, foreach=True),
            params=params,
            lr_or_lr_schedule=config.lr,
        )

    def postprocess_gradients_for_module(self, *, module_id, config=None, module_gradients_dict):
        grads = [g for g in module_gradients_dict.values() if g is not None]
        if not grads:
            return module_gradients_dict
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        if not torch.isfinite(norm):
            self.metrics.log_value((module_id, "nonfinite_gradients"), 1, reduce="sum")
            torch._foreach_zero_(grads)  # skip this update's step (Adam moments see zeros)
        elif config.grad_clip and norm > config.grad_clip:
            torch._foreach_mul_(grads, config.grad_clip / (norm + 1e-6))
        self.metrics.log_value((module_id, "gradients_global_norm"), norm, window=1)
        return module_gradients_dict

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        extra = config.learner_config_dict
        td = super().compute_loss_for_module(module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)
        weight = float(extra.get("margin_weight", 0.0))
        if weight <= 0 or "is_demo" not in batch:
            return td
        jm = margin_loss(
            fwd_out[QF_PREDS], batch[Columns.ACTIONS], batch["is_demo"], float(extra.get("margin", 0.8))
        )
        self.metrics.log_value((module_id, "margin_loss"), jm, window=1)
        self.metrics.log_value((module_id, "demo_fraction"), batch["is_demo"].float().mean(), window=1)
        if extra.get("margin_only"):
            return weight * jm
        return td + weight * jm
