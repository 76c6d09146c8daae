"""DQN's learner with DQfD's objective (Hester et al. 2018):

    J(Q) = J_DQ + lambda1 J_n + lambda2 J_E + lambda3 J_L2

- J_DQ: the 1-step double-DQN TD loss (Huber), on every row, weighted by its importance weight;
- J_n: the same with the n-step return (cut at the episode's end by the buffer), `n_step_weight`;
- J_E = max_a [Q(s, a) + l(a_E, a)] - Q(s, a_E), l = `margin` for a != a_E: on demonstration rows
  only (column `is_demo`), `margin_weight`;
- J_L2: the squared L2 norm of the Q-network's weights and biases, `l2_weight`.

The paper's values: lambda1 = lambda2 = 1, margin 0.8, lambda3 = 1e-5, n = 10 (rayapp's defaults
are in rayapp/config/sections.py beside them). With `margin_only` the TD terms go: imitation data
without rewards can still shape the Q-function. Priorities come from the n-step TD error.

Also: gradients clipped to `grad_clip` (global norm) in one fused pass that also checks finiteness;
an update whose gradients are not finite is skipped whole (no optimizer step, so Adam's moments do
not move the weights either). Target-network syncs run on one clock: env steps, plus
1/updates_per_env_step per offline update (`OFFLINE_CLOCK` in the update's timesteps).
"""

from __future__ import annotations

import torch
from ray.rllib.algorithms.dqn.dqn_learner import (
    QF_LOSS_KEY,
    QF_MAX_KEY,
    QF_MEAN_KEY,
    QF_MIN_KEY,
    QF_NEXT_PREDS,
    QF_PREDS,
    QF_TARGET_NEXT_PREDS,
    TD_ERROR_MEAN_KEY,
)
from ray.rllib.algorithms.dqn.torch.dqn_torch_learner import DQNTorchLearner
from ray.rllib.core.columns import Columns
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME, TD_ERROR_KEY

from rayapp.models.numerics import flush_denormals
from rayapp.rl.module import QF_NEXT_1_PREDS, QF_TARGET_NEXT_1_PREDS

__all__ = ["DQfDTorchLearner", "OFFLINE_CLOCK", "margin_loss", "td_target"]

OFFLINE_CLOCK = "rayapp_offline_clock"


def margin_loss(q: torch.Tensor, actions: torch.Tensor, is_demo: torch.Tensor, margin: float) -> torch.Tensor:
    a = actions.long()
    margins = torch.full_like(q, margin).scatter(1, a[:, None], 0.0)
    je = (q + margins).max(1).values - q.gather(1, a[:, None]).squeeze(1)
    d = is_demo.float()
    return (je * d).sum() / d.sum().clamp(min=1.0)


def td_target(q_next: torch.Tensor, q_target_next: torch.Tensor, reward, terminated, gamma_n) -> torch.Tensor:
    """Double-DQN target: the online network picks the action, the target network values it."""
    best = q_next.argmax(-1, keepdim=True)
    v = q_target_next.gather(1, best).squeeze(1)
    return (reward + gamma_n * (1.0 - terminated.float()) * v).detach()


class DQfDTorchLearner(DQNTorchLearner):
    """Also leaner on CPU than the stock learner: a foreach Adam and one fused gradient-norm pass
    (clip + finiteness) instead of a Python loop of per-parameter checks (see benchmarks/finetune.py)."""

    def build(self) -> None:
        super().build()
        flush_denormals()  # the updates run in this thread (local learner: the driver's; else the actor's)
        self._offline_clock = 0.0
        self._skip_step = False

    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        params = self.get_parameters(self.module[module_id])
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
        # torch._foreach_norm/_foreach_mul_ are torch's fused multi-tensor kernels (underscored, but
        # what torch.nn.utils.clip_grad_norm_ itself calls); tests/test_dqfd.py's clipping test fails
        # if they move
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        if not torch.isfinite(norm):
            self.metrics.log_value((module_id, "nonfinite_gradients"), 1, reduce="sum")
            self._skip_step = True
        elif config.grad_clip and norm > config.grad_clip:
            torch._foreach_mul_(grads, config.grad_clip / (norm + 1e-6))
        self.metrics.log_value((module_id, "gradients_global_norm"), norm, window=1)
        return module_gradients_dict

    def apply_gradients(self, gradients_dict) -> None:
        if self._skip_step:  # non-finite gradients: no step at all, the optimizer state stays
            self._skip_step = False
            return
        super().apply_gradients(gradients_dict)

    def after_gradient_based_update(self, *, timesteps) -> None:
        # DQN syncs the target network every `target_network_update_freq` env steps; offline there
        # are none, so offline updates advance the clock by 1/updates_per_env_step each
        if OFFLINE_CLOCK in timesteps:
            self._offline_clock = float(timesteps[OFFLINE_CLOCK])
        env_steps = timesteps.get(NUM_ENV_STEPS_SAMPLED_LIFETIME) or 0
        super().after_gradient_based_update(
            timesteps={**timesteps, NUM_ENV_STEPS_SAMPLED_LIFETIME: env_steps + self._offline_clock}
        )

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        x = config.learner_config_dict
        q = fwd_out[QF_PREDS]
        a = batch[Columns.ACTIONS].long()
        q_a = q.gather(1, a[:, None]).squeeze(1)
        w = batch["weights"] if "weights" in batch else torch.ones_like(q_a)
        loss_fn = torch.nn.functional.huber_loss if config.td_error_loss_fn == "huber" else torch.nn.functional.mse_loss
        y_n = td_target(fwd_out[QF_NEXT_PREDS], fwd_out[QF_TARGET_NEXT_PREDS], batch[Columns.REWARDS],
                        batch[Columns.TERMINATEDS], config.gamma ** batch["n_step"].float())  # fmt: skip
        j_n = (w * loss_fn(q_a, y_n, reduction="none")).mean()
        td = (q_a - y_n).abs().detach()
        if QF_NEXT_1_PREDS in fwd_out:
            y_1 = td_target(fwd_out[QF_NEXT_1_PREDS], fwd_out[QF_TARGET_NEXT_1_PREDS], batch["reward_1"],
                            batch["terminated_1"], config.gamma)  # fmt: skip
            j_1 = (w * loss_fn(q_a, y_1, reduction="none")).mean()
        else:  # a batch without one-step successors (RLlib's own buffers): n-step TD only
            j_1 = torch.zeros((), device=q.device)
        is_demo = batch["is_demo"] if "is_demo" in batch else torch.zeros_like(q_a)
        j_e = margin_loss(q, a, is_demo, float(x.get("margin", 0.8)))
        l2 = sum((p**2).sum() for p in self.module[module_id].parameters() if p.requires_grad)
        td_loss = float(x.get("one_step_weight", 1.0)) * j_1 + float(x.get("n_step_weight", 1.0)) * j_n
        total = float(x.get("margin_weight", 1.0)) * j_e + float(x.get("l2_weight", 0.0)) * l2
        if not x.get("margin_only"):
            total = total + td_loss
        self.metrics.log_value(key=(module_id, TD_ERROR_KEY), value=td, reduce="item_series")
        self.metrics.log_dict(
            {QF_LOSS_KEY: td_loss, "td_1_loss": j_1, "td_n_loss": j_n, "margin_loss": j_e, "l2_loss": l2,
             "demo_fraction": is_demo.float().mean(), QF_MEAN_KEY: q_a.mean(), QF_MAX_KEY: q_a.max(),
             QF_MIN_KEY: q_a.min(), TD_ERROR_MEAN_KEY: td.mean(), "total_loss": total},
            key=module_id, window=1,
        )  # fmt: skip
        return total
