"""Policy checkpoints without pickles: safetensors + JSON, a file replaced by a malicious pickle is
refused without running it, old pickled checkpoints get a message and a safe converter. No Ray."""

import json
import os

import pytest
import torch

from rayapp.errors import RayappError
from rayapp.frames import FrameSpec
from rayapp.models import ModelSpec, build_model, load_policy, resolve_checkpoint, save_policy
from rayapp.models.checkpoint import LegacyCheckpointError, write_best
from rayapp.models.convert import convert_tree
from rayapp.models.convert import main as convert_main
from rayapp.train.bc_loop import TRAIN_STATE, load_train_state

SPEC = ModelSpec((4, 84, 84), (("action", 4),))
GAME = {"game": "Breakout", "env_id": "ALE/Breakout-v5", "actions": [["NOOP", "FIRE", "RIGHT", "LEFT"]]}


class Evil:
    """Unpickling this creates the marker file: what an attacker's checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_file(path, marker):
    torch.save({"format": "rayapp.policy/1", "state_dict": {}, "x": Evil(str(marker))}, str(path))


def legacy_checkpoint(folder, net):
    """A checkpoint as rayapp wrote them before: one pickle with everything."""
    os.makedirs(folder, exist_ok=True)
    payload = {"format": "rayapp.policy/1", "spec": SPEC.to_json(), "frames": FrameSpec().to_json(), "game": GAME,
               "config": {"run": {"dir": "x"}}, "meta": {"stage": "pretrain", "epoch": 3},
               "state_dict": {k: v.clone() for k, v in net.state_dict().items()}}  # fmt: skip
    torch.save(payload, os.path.join(folder, "model.pt"))


def x_batch():
    return torch.randint(
        0, 255, (3, 4, 84, 84), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )


def test_round_trip_is_safetensors_and_json(tmp_path):
    net = build_model(SPEC).eval()
    save_policy(
        str(tmp_path / "c"), net, SPEC, FrameSpec(), GAME, {"a": 1}, {"epoch": 2, "metrics": {"x": 0.5}}
    )
    assert sorted(os.listdir(tmp_path / "c")) == ["model.safetensors", "policy.json"]
    header = json.loads((tmp_path / "c" / "policy.json").read_text())
    assert header["format"] == "rayapp.policy/2" and header["meta"]["epoch"] == 2
    pol = load_policy(str(tmp_path / "c"))
    assert pol.spec == SPEC and pol.action_labels() == GAME["actions"][0] and pol.config == {"a": 1}
    with torch.no_grad():
        assert torch.equal(pol.model()(x_batch())[0], net(x_batch())[0])


@pytest.mark.parametrize("victim", ["model.safetensors", "policy.json"])
def test_a_file_replaced_by_a_pickle_is_refused_without_running_it(tmp_path, victim):
    save_policy(str(tmp_path / "c"), build_model(SPEC), SPEC, FrameSpec(), GAME, {})
    marker = tmp_path / "pwned"
    evil_file(tmp_path / "c" / victim, marker)
    with pytest.raises(RayappError, match=f"c/{victim}: not a readable rayapp checkpoint"):
        load_policy(str(tmp_path / "c"))
    assert not marker.exists()


def test_train_state_is_read_with_the_restricted_loader(tmp_path):
    net = build_model(SPEC)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(x_batch())[0].sum().backward()
    opt.step()
    torch.save({"optimizer": opt.state_dict(), "epoch": 4}, str(tmp_path / TRAIN_STATE))
    state = load_train_state(str(tmp_path))  # an AdamW state dict passes weights_only=True
    again = torch.optim.AdamW(net.parameters(), lr=1e-3)
    again.load_state_dict(state["optimizer"])
    assert state["epoch"] == 4 and torch.equal(
        again.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )
    marker = tmp_path / "pwned"
    evil_file(tmp_path / TRAIN_STATE, marker)
    with pytest.raises(RayappError, match=f"{TRAIN_STATE} of the checkpoint being resumed is refused"):
        load_train_state(str(tmp_path))
    assert not marker.exists()


def test_old_pickled_checkpoints_are_refused_with_what_to_do(tmp_path):
    net = build_model(SPEC).eval()
    run = tmp_path / "run"
    old = run / "pretrain" / "checkpoint_000"
    legacy_checkpoint(str(old), net)
    write_best(str(run), "pretrain", str(old), {"epoch": 3})
    for path in (old, run):  # a checkpoint folder, and a run folder whose best.json points to one
        with pytest.raises(
            LegacyCheckpointError,
            match=r"old checkpoint format \(model.pt, a pickle\).*python -m rayapp.models.convert",
        ):
            load_policy(str(path))
    # a malicious old-format file is not run either: not by loading, and not by the converter
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad"
    bad.mkdir()
    evil_file(bad / "model.pt", marker)
    with pytest.raises(LegacyCheckpointError):
        load_policy(str(bad))
    with pytest.raises(RayappError, match="bad/model.pt: refused"):
        convert_tree(str(bad))
    assert not marker.exists()
    # the converter rewrites every old checkpoint under a run folder; then it loads as before
    assert convert_main([str(run)]) == 0
    assert os.path.exists(old / "policy.json") and resolve_checkpoint(str(run)) == str(old)
    pol = load_policy(str(run))
    assert pol.meta["epoch"] == 3 and pol.game == GAME
    with torch.no_grad():
        assert torch.equal(pol.model()(x_batch())[0], net(x_batch())[0])


def test_convert_on_object_storage(bucket, tmp_path):
    import pyarrow.fs as pafs

    from rayapp.storage import resolve

    net = build_model(SPEC)
    legacy_checkpoint(str(tmp_path / "ck"), net)
    dst = resolve(f"s3://{bucket}/runs/a/finetune/policies/final-00000500")
    pafs.copy_files(
        str(tmp_path / "ck"),
        dst.path,
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=dst.fs,
    )
    with pytest.raises(LegacyCheckpointError):
        load_policy(dst.uri)
    assert convert_tree(f"s3://{bucket}/runs/a") == [dst.uri]
    assert load_policy(dst.uri).spec == SPEC
