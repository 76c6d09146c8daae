"""A few true actions during LAM training (LAOM, `lam.label_weight`): the labelled pairs carry the
action taken at frame t, come from the episodes `rayapp lam map` uses, reach the loss through the
model's head, and an action-less label source fails before training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rayapp.errors import RayappError
from rayapp.replay.reader import ReplayDataset
from tests.test_lam import lam_cfg


def test_labelled_pairs_carry_the_action_taken_at_frame_t_of_the_mapped_episodes(bc_run):
    from rayapp.data.pipeline import build_pair_ingest
    from rayapp.train.lam import lam_frames

    uri = f"{bc_run}/replays"
    cfg = lam_cfg(Path("unused"), uri)
    frames = lam_frames(cfg)
    video = build_pair_ingest(cfg, frames)
    few = build_pair_ingest(cfg, frames, labelled=(1, 1.0))  # lam.map_episodes=1
    assert video.output_columns == () and few.output_columns == ("action",)
    mapped = few.index.episodes("train")
    assert len(mapped) == 1 and mapped[0] in video.index.episodes("train")
    assert few.index.episodes("val") == video.index.episodes("val")  # held-out splits as in every stage
    episodes = {e.episode_id: e for e in ReplayDataset(uri).iter_episodes(decode=False)}
    rows = few.dataset("train", train=False, include_ids=True).take_all()
    ep = episodes[mapped[0]]
    assert len(rows) == ep.length - 1  # every pair of that episode, no other
    for r in rows:
        t, t1 = r["stack_steps"]
        assert t1 == t + 1 == r["step"]
        assert r["action"] == ep.actions[list(ep.steps).index(t)]  # the action at t, not at t+1
    assert any(ep.actions[i] != ep.actions[i + 1] for i in range(ep.length - 1))  # so the two could differ


def test_the_label_loss_reaches_the_encoder_and_is_zero_without_labels():
    from rayapp.models.lam import LamSpec, LatentActionModel

    kw = dict(height=42, width=32, enc_channels=(8, 16, 16, 32, 32), dec_channels=(32, 32, 16, 16, 8),
              latent_dim=16, codes=8, positions=1)  # fmt: skip
    with pytest.raises(ValueError, match="label_classes"):
        LamSpec(**kw, label_weight=1.0)
    torch.manual_seed(0)
    m = LatentActionModel(LamSpec(**kw, label_classes=(4, 3), label_weight=2.0))
    x = torch.rand(6, 2, 42, 32)
    plain = m(x[:, :1], x[:, 1:])
    assert float(plain.losses["label"]) == 0.0
    actions = torch.tensor([[0, 1], [1, 2], [2, 0], [3, 1], [0, 2], [1, 0]])
    out = m(x[:, :1], x[:, 1:], (x[:, :1], x[:, 1:], actions))
    logits = m.action_logits(x[:, :1], x[:, 1:])
    expected = sum(torch.nn.functional.cross_entropy(lg, actions[:, k]) for k, lg in enumerate(logits))
    assert [lg.shape for lg in logits] == [(6, 4), (6, 3)]
    assert torch.isclose(out.losses["label"], expected, rtol=1e-4)
    rest = out.losses["recon"] + out.losses["commit"] + 0.01 * out.losses["entropy"]
    assert torch.isclose(out.losses["total"], rest + 2.0 * expected, rtol=1e-4)
    m.zero_grad()
    out.losses["label"].backward()  # the labels train the encoder, not only the head
    assert m.encoder[0][0].weight.grad.abs().sum() > 0
    assert m.frame_encoder[0][0].weight.grad is None  # the decoder's side is not on the label path


def test_lam_train_with_a_few_labels_logs_the_label_loss_and_keeps_the_head(bc_run, tmp_path):
    from rayapp.models.lam_checkpoint import load_lam
    from rayapp.train.lam import train_lam

    uri = f"{bc_run}/replays"
    run = tmp_path / "run"
    result = train_lam(lam_cfg(run, uri, "lam.steps=10", "lam.label_weight=1.0", "lam.map_episodes=1"))
    ck = load_lam(str(run))
    n = ReplayDataset(uri).info.actions[0].n
    assert ck.spec.label_classes == (n,) and ck.spec.label_weight == 1.0 and len(ck.model().label_heads) == 1
    rows = [line.split(",") for line in (run / "lam" / "metrics.csv").read_text().splitlines()]
    col = rows[0].index("train/label_loss")
    losses = [float(r[col]) for r in rows[1:] if r[col]]
    assert losses and all(0 < v < 20 for v in losses)  # cross-entropy of real labels: positive, finite
    assert result.pairs["train"] > 0 and result.metrics["val/psnr"] > 0


def test_label_weight_on_an_action_less_source_fails_before_training(bc_run, tmp_path):
    from rayapp.replay.dataset import create_dataset
    from rayapp.replay.schema import DatasetInfo, ObservationSpec
    from rayapp.replay.writer import ReplayWriter
    from rayapp.train.lam import train_lam

    video = tmp_path / "video"
    info = DatasetInfo("Breakout", "ALE/Breakout-v5", ObservationSpec((210, 160, 3)), (), 15.0)
    create_dataset(str(video), info)
    with ReplayWriter(str(video), info, "v0") as w:
        w.begin_episode()
        for _ in range(4):
            w.add_step(np.zeros((210, 160, 3), np.uint8), None, 0.0, False, False)
        w.end_episode()
    cfg = lam_cfg(tmp_path / "r", f"{bc_run}/replays", "lam.steps=2", "lam.label_weight=1.0", f"lam.label_uri={video}")
    with pytest.raises(RayappError, match=rf"lam.label_weight=1.0 needs true actions: {video} has no actions"):
        train_lam(cfg)
    assert not (tmp_path / "r" / "lam").exists() or not any((tmp_path / "r" / "lam").glob("checkpoint*"))
