"""Calibrating BC's logits into initial Q-values: returns-to-go, the head's scale, the value bias."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rayapp.rl.init_q import calibrate_bc_state, discounted_returns, top_two_gap


def test_returns_to_go_restart_after_a_cut():
    r = np.array([1.0, 0.0, 1.0, 1.0])
    assert discounted_returns(r, 0.5).tolist() == pytest.approx([1.375, 0.75, 1.5, 1.0])
    cut = np.array([False, True, False, False])  # the transition out of step 1 loses a life
    assert discounted_returns(r, 0.5, cut).tolist() == pytest.approx([1.0, 0.0, 1.5, 1.0])


@pytest.mark.parametrize("dueling", [True, False])
def test_the_scaled_head_keeps_every_argmax_and_hits_the_gap(dueling):
    rng = np.random.default_rng(0)
    w, b = torch.as_tensor(rng.normal(0, 3, (4, 8)), dtype=torch.float32), torch.as_tensor(rng.normal(0, 3, 4), dtype=torch.float32)
    state = {"heads.0.weight": w, "heads.0.bias": b}
    z = torch.as_tensor(rng.normal(size=(500, 8)), dtype=torch.float32)
    out = (z @ w.T + b).numpy()
    new, report = calibrate_bc_state(state, out, dueling, 0.8, 5.0)
    q = (z @ new["heads.0.weight"].T + new["heads.0.bias"]).numpy()
    if dueling:
        assert float(new["value.bias"][0]) == 5.0 and float(new["value.weight"].abs().sum()) == 0.0
        q = q - q.mean(1, keepdims=True) + 5.0
    else:
        assert "value.bias" not in new
    assert np.array_equal(q.argmax(1), out.argmax(1))
    assert top_two_gap(q) == pytest.approx(0.8, rel=1e-4) and report["head_scale"] < 1
    assert q.mean() == pytest.approx(5.0 + (0 if dueling else out.mean() * report["head_scale"]), abs=1e-3)
    assert torch.equal(state["heads.0.weight"], w)  # the BC weights themselves are untouched
    same, r0 = calibrate_bc_state(state, out, dueling, 0.0, None)
    assert torch.equal(same["heads.0.weight"], w) and r0["head_scale"] == 1.0
