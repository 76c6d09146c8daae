"""benchmarks/lam_variants.py's windows: a pair with `context` frames before t never crosses an
episode (the context repeats the episode's first frame), and its actions are a_t and a_{t-1}."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

from lam_variants import pairs, parse_variant  # noqa: E402


def _episode(first: int, n: int):
    obs = (first + np.arange(n, dtype=np.uint8))[:, None, None, None] * np.ones((1, 1, 2, 2), np.uint8)
    return SimpleNamespace(obs=obs, actions=np.arange(first, first + n)[:, None])


def test_windows_stay_in_their_episode_and_pad_with_the_first_frame():
    eps = [_episode(10, 4), _episode(50, 3)]
    frames, now, before = pairs(eps, lambda o: o, context=2)
    assert frames.shape == (3 + 2, 4, 2, 2)  # (T - 1) pairs per episode, 2 context + t + t+1
    first = frames[:, :, 0, 0].tolist()
    assert first[0] == [10, 10, 10, 11] and first[2] == [10, 11, 12, 13]  # episode 1: padded, then real
    assert first[3] == [50, 50, 50, 51] and first[4] == [50, 50, 51, 52]  # episode 2 starts afresh
    assert now.tolist() == [10, 11, 12, 50, 51] and before.tolist() == [0, 10, 11, 0, 50]
    plain, _, _ = pairs(eps, lambda o: o)
    assert plain[:, :, 0, 0].tolist() == [[10, 11], [11, 12], [12, 13], [50, 51], [51, 52]]


def test_variant_fields_keep_their_types():
    kw = parse_variant("quantizer=fsq,fsq_levels=4x4,context=1,steps=1600,changed_weight=50")
    assert kw["context"] == 1 and isinstance(kw["context"], int) and kw["steps"] == 1600
    assert kw["fsq_levels"] == (4, 4) and kw["changed_weight"] == 50.0 and kw["codes"] == 16


def test_a_few_labels_train_a_head_that_reads_the_action_from_the_latent():
    from lam_variants import run_variant

    rng = np.random.default_rng(0)

    def data(n):  # frame t+1 shows a bright bar in one of three columns: the action
        frames = np.zeros((n, 2, 32, 32), np.uint8)
        acts = rng.integers(0, 3, n)
        for i, a in enumerate(acts):
            frames[i, 1, :, 10 * a : 10 * a + 4] = 255
        return frames, acts, acts

    kw = dict(in_channels=1, height=32, width=32, enc_channels=(8, 8, 16, 16, 16), dec_channels=(16, 16, 8, 8, 8),
              latent_dim=8, codes=16, positions=1, quantizer="fsq", fsq_levels=(4, 4), steps=40)  # fmt: skip
    train, test = data(96), data(64)
    supervised = run_variant({**kw, "label_weight": 1.0}, train, test, 40, labelled=48)
    assert supervised["head_accuracy"] > supervised["majority_class"] + 0.2, supervised
    plain = run_variant(kw, train, test, 40)
    unlabelled = run_variant({**kw, "label_weight": 1.0}, train, test, 40, labelled=0)  # no labels: no head
    assert "head_accuracy" not in plain and unlabelled == {**plain, "seconds": unlabelled["seconds"]}
