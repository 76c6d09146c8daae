"""The latent action model as a torch module: shapes at the specification's size and others, the
bottleneck (the prediction depends on frame t+1 only through the codes), learning a hidden action
from synthetic pairs, code resets, and the metric helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rayapp.models.lam import LamSpec, LatentActionModel, changed_mask, joint_code, perplexity, psnr, ssim

SMALL = dict(enc_channels=(8, 16, 16, 32, 32), dec_channels=(32, 32, 16, 16, 8), latent_dim=16)


@pytest.mark.parametrize(
    "kw, codes_shape",
    [
        ({}, (2, 35)),  # 210x160 gray, the whole 7x5 grid
        ({"in_channels": 3, **SMALL}, (2, 35)),
        ({"positions": 4, **SMALL}, (2, 4)),
        ({"quantizer": "fsq", "codes": 256, **SMALL}, (2, 35)),
        ({"height": 84, "width": 84, "positions": 1, "codes": 8, **SMALL}, (2, 1)),
    ],
)
def test_shapes(kw, codes_shape):
    spec = LamSpec(**kw)
    m = LatentActionModel(spec)
    a = torch.rand(2, spec.in_channels, spec.height, spec.width)
    out = m(a, torch.rand_like(a))
    assert out.pred.shape == a.shape and out.codes.shape == codes_shape
    assert set(out.losses) == {"recon", "commit", "entropy", "label", "total"} and out.usage.sum() == codes_shape[1] * 2
    out.losses["total"].backward()
    assert m.decode(a, out.codes).shape == a.shape


def test_round_trip_rebuilds_the_same_model():
    spec = LamSpec(height=42, width=32, codes=8, positions=1, **SMALL)
    m = LatentActionModel(spec).eval()
    again = LatentActionModel(LamSpec.from_json(spec.to_json())).eval()
    again.load_state_dict(m.state_dict())
    a, b = torch.rand(3, 1, 42, 32), torch.rand(3, 1, 42, 32)
    assert torch.equal(m.encode(a, b), again.encode(a, b))
    assert torch.allclose(m.decode(a, m.encode(a, b)), again.decode(a, m.encode(a, b)))
    with pytest.raises(ValueError, match="fsq_levels"):
        LamSpec(quantizer="fsq", codes=10, fsq_levels=(4, 4))


def test_frame_t1_reaches_the_prediction_only_through_the_codes():
    spec = LamSpec(height=42, width=32, codes=8, positions=1, **SMALL)
    m = LatentActionModel(spec).eval()
    for p in m.films.parameters():  # FiLM starts at identity; give it something to say
        torch.nn.init.normal_(p, std=0.5)
    a = torch.rand(4, 1, 42, 32)
    codes = torch.tensor([[0], [1], [2], [3]])
    with torch.no_grad():
        one = m.decode(a, codes)
        assert torch.equal(one, m.decode(a, codes))  # nothing else goes in: deterministic given (t, codes)
        other = m.decode(a, (codes + 1) % 8)
    assert (one - other).abs().max() > 1e-4  # the codes do change the prediction


def test_context_frames_reach_both_halves_and_frame_t_stays_the_residual_base():
    spec = LamSpec(height=42, width=32, codes=8, positions=1, context=2, **SMALL)
    m = LatentActionModel(spec).eval()
    for p in m.films.parameters():
        torch.nn.init.normal_(p, std=0.5)
    history = torch.rand(4, 3, 42, 32, requires_grad=True)  # frames t-2, t-1, t
    out = m(history, torch.rand(4, 1, 42, 32))
    assert out.pred.shape == (4, 1, 42, 32) and out.codes.shape == (4, 1)
    out.losses["total"].backward()
    assert history.grad[:, 0].abs().sum() > 0  # the oldest context frame is seen
    with torch.no_grad():
        older = history.detach().clone()
        older[:, 0] = torch.rand(4, 42, 32)
        assert (m.decode(history.detach(), out.codes) - m.decode(older, out.codes)).abs().max() > 1e-4
        torch.nn.init.zeros_(m.up[-1].weight)
        torch.nn.init.zeros_(m.up[-1].bias)  # the decoder adds nothing: the prediction is frame t itself
        assert torch.equal(m.decode(history.detach(), out.codes), history.detach()[:, -1:])
    with pytest.raises(ValueError, match="context"):
        LamSpec(context=-1)
    assert out.latent.shape == (4, 1, spec.latent_dim)  # the continuous latent the codes quantise
    with torch.no_grad():
        assert torch.equal(m._quantize(out.latent)[1], out.codes)  # noqa: SLF001


def _moving_square(n: int, rng: np.random.Generator, size: int = 32):
    """Pairs of a bright square moving one of 4 ways by 3 pixels: the hidden action."""
    dirs = np.array([(0, 3), (0, -3), (3, 0), (-3, 0)])
    a = np.zeros((n, 1, size, size), np.float32)
    b = np.zeros_like(a)
    act = rng.integers(0, 4, n)
    for i in range(n):
        y, x = rng.integers(6, size - 12, 2)
        a[i, 0, y : y + 6, x : x + 6] = 1
        dy, dx = dirs[act[i]]
        b[i, 0, y + dy : y + dy + 6, x + dx : x + dx + 6] = 1
    return torch.from_numpy(a), torch.from_numpy(b), act


def _train_on_squares(spec: LamSpec, steps: int = 300):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    m = LatentActionModel(spec)
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    for step in range(steps):
        a, b, _ = _moving_square(32, rng)
        out = m(a, b)
        opt.zero_grad()
        out.losses["total"].backward()
        opt.step()
        if step % 50 == 49:
            m.reset_unused_codes(out.usage)
    m.eval()
    a, b, act = _moving_square(512, np.random.default_rng(1))
    with torch.no_grad():
        codes = m.encode(a, b)
        pred = m.decode(a, codes).clamp(0, 1)
    mask = changed_mask(a, b)
    gain = float(torch.nanmean(psnr(pred, b, mask)) - torch.nanmean(psnr(a, b, mask)))
    c = codes[:, 0].numpy()
    # how well the code tells the direction: each code read as its most frequent direction
    accuracy = sum(np.bincount(act[c == k], minlength=4).max() for k in set(c)) / len(c)
    return gain, accuracy


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_learns_the_hidden_action_and_beats_copying(quantizer):
    """Both quantisers predict the changed pixels better than copying frame t. FSQ's codes tell
    the direction nearly always; VQ's (EMA, resets, entropy bonus) at least half the time (chance is
    a quarter): on these squares VQ merges directions on some other seeds, the collapse the LAM
    literature warns about."""
    kw = {"quantizer": "fsq", "fsq_levels": (2, 2, 2)} if quantizer == "fsq" else {"entropy_weight": 0.05}
    gain, accuracy = _train_on_squares(LamSpec(height=32, width=32, codes=8, positions=1, **kw, **SMALL))
    assert gain > 1.0
    assert accuracy > (0.9 if quantizer == "fsq" else 0.5), accuracy


def test_reset_unused_codes_moves_dead_codes():
    spec = LamSpec(height=32, width=32, codes=8, positions=1, **SMALL)
    m = LatentActionModel(spec)
    a = torch.rand(16, 1, 32, 32)
    m(a, torch.rand_like(a))
    before = m.quantizer.codebook.clone()
    usage = torch.zeros(8)
    usage[:2] = 5
    assert m.reset_unused_codes(usage) == 6
    after = m.quantizer.codebook
    assert torch.equal(before[:2], after[:2]) and not torch.allclose(before[2:], after[2:])
    fsq = LatentActionModel(LamSpec(height=32, width=32, quantizer="fsq", codes=16, positions=1, **SMALL))
    fsq(a, torch.rand_like(a))
    assert fsq.reset_unused_codes(torch.zeros(16)) == 0


def test_metric_helpers():
    a = torch.rand(2, 1, 16, 16)
    assert torch.isinf(psnr(a, a)).all() and torch.allclose(ssim(a, a), torch.ones(2))
    b = a.clone()
    b[0, 0, 0, 0] += 0.5
    m = changed_mask(a, b)
    assert int(m[0].sum()) == 1 and int(m[1].sum()) == 0
    p = psnr(a, b, m)
    assert math.isclose(float(p[0]), 10 * math.log10(1 / 0.25), rel_tol=1e-4) and math.isnan(float(p[1]))
    assert abs(perplexity(torch.tensor([3.0, 3, 3, 0])) - 3) < 1e-9 and perplexity(torch.tensor([5.0, 0])) == 1
    assert joint_code(np.array([[1, 2], [3, 0]]), 4).tolist() == [6, 12]
    with pytest.raises(ValueError, match="int32"):
        joint_code(torch.zeros(1, 35, dtype=torch.long), 256)


def test_changed_weight_counts_the_changed_pixels_more():
    """With changed_weight, the loss is the weighted mean: an error on a pixel that changed between
    the frames costs 1 + changed_weight times an error on a static one."""
    a = torch.zeros(1, 1, 32, 32)
    b = a.clone()
    b[0, 0, 0, :4] = 1.0  # 4 changed pixels
    plain = LatentActionModel(LamSpec(height=32, width=32, codes=8, positions=1, **SMALL))
    weighted = LatentActionModel(LamSpec(height=32, width=32, codes=8, positions=1, changed_weight=9.0, **SMALL))
    miss_change = a.clone()  # predicts no change: wrong on the 4 changed pixels
    miss_static = b.clone()
    miss_static[0, 0, 31, :4] = 1.0  # right on the change, wrong on 4 static pixels
    assert torch.isclose(plain.recon_loss(miss_change, a, b), plain.recon_loss(miss_static, a, b))
    w_change, w_static = weighted.recon_loss(miss_change, a, b), weighted.recon_loss(miss_static, a, b)
    assert torch.isclose(w_change, 10 * w_static)
    assert torch.isclose(w_change, torch.tensor(4 * 10 / (1024 + 4 * 9)))
