"""Q-values on the scale of returns at the start of fine-tuning, with BC's greedy policy unchanged.

A BC network's logits become the initial Q-values (`rayapp.rl.weights.load_into`). Their scale is
the cross-entropy's, not the returns': on the Breakout teacher's demonstrations the greedy action's
logit lies 8.1 above the runner-up (benchmarks/RESULTS.md), while DQfD's
margin is 0.8 and the mean clipped discounted return 2.54. TD then spends the first thousands of
updates dragging every value towards the returns through the shared layers, and the greedy policy
moves with them.

Two settings fix the scale without changing any greedy action:
- `finetune.init_action_gap`: the action head's weights and bias times s > 0, s chosen so that the
  mean gap between the two best actions on demonstration states is this value (the margin is the
  natural one). Multiplying every output by one positive number keeps each argmax.
- `finetune.init_value_from_returns`: the value head's bias (or, without one, every action's bias)
  starts at the demonstrations' mean discounted return (rewards as TD sees them: clipped, cut at
  lost lives with `finetune.life_loss_terminal`), so Q(s, a) starts near what TD will ask of it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["discounted_returns", "top_two_gap", "calibrate_bc_state"]


def discounted_returns(rewards: np.ndarray, gamma: float, cuts: np.ndarray | None = None) -> np.ndarray:
    """Returns-to-go sum_k gamma^k r_{t+k} of one episode, restarting after each `cuts` step (a
    transition that ends the return: a lost life with life-loss terminals)."""
    r = np.asarray(rewards, np.float64)
    out = np.zeros(len(r))
    g = 0.0
    for t in range(len(r) - 1, -1, -1):
        if cuts is not None and cuts[t]:
            g = 0.0
        g = r[t] + gamma * g
        out[t] = g
    return out


def top_two_gap(outputs: np.ndarray) -> float:
    """Mean over rows of (best - second best) output."""
    s = np.sort(np.asarray(outputs, np.float64), axis=1)
    return float(np.mean(s[:, -1] - s[:, -2]))


def calibrate_bc_state(
    state: dict[str, Any], outputs: np.ndarray, dueling: bool, action_gap: float, value: float | None
) -> tuple[dict[str, Any], dict[str, float]]:
    """BC weights with the action head scaled to `action_gap` (0: as they are) and the value bias
    at `value` (None: as it is). `outputs`: the BC head's outputs on demonstration states.
    Returns the new weights (the input is not changed) and what was done."""
    import torch

    new = dict(state)
    gap = top_two_gap(outputs)
    scale = action_gap / gap if action_gap > 0 and gap > 0 else 1.0
    for k in ("heads.0.weight", "heads.0.bias"):
        new[k] = torch.as_tensor(state[k]) * scale
    if value is not None:
        if dueling:  # V starts at zero (PolicyNetwork): its bias alone carries the level
            new["value.bias"] = torch.full((1,), float(value))
            if "value.weight" not in new:
                new["value.weight"] = torch.zeros(1, torch.as_tensor(state["heads.0.weight"]).shape[1])
        else:
            new["heads.0.bias"] = new["heads.0.bias"] + float(value)
    return new, {"bc_action_gap": gap, "head_scale": scale, "value_bias": float(value) if value is not None else 0.0}


def calibrated_bc_state(algo, pol, f, frame_stack: int, samples: int = 2048, seed: int = 0):
    """The BC weights `load_into` should put in, calibrated by `finetune.init_action_gap` and
    `finetune.init_value_from_returns` on `samples` demonstration states of the algorithm's replay
    buffer (returns over 500 steps: gamma^500 < 0.7% at 0.99). Returns (weights, report)."""
    import torch

    from rayapp.models.nets import build_model

    store = algo.buffer.demos
    used = min(store.written, store.capacity)
    drawable = store.gidx[:used][store.next[:used] >= 0]
    g = np.random.default_rng(seed).choice(drawable, size=min(samples, len(drawable)), replace=False)
    net = build_model(pol.spec)
    net.load_state_dict(pol.state_dict)
    net.eval()
    with torch.no_grad():
        outputs = np.concatenate([net(torch.as_tensor(store.stack(c, frame_stack)))[0].numpy()
                                  for c in np.array_split(g, max(1, len(g) // 256))])  # fmt: skip
    value = None
    if f.init_value_from_returns:
        value = float(np.mean(store.returns(g, 500, f.gamma)["return"]))
    state, report = calibrate_bc_state(pol.state_dict, outputs, pol.spec.dueling or f.dueling, f.init_action_gap, value)
    return state, {**report, "states": len(g)}
