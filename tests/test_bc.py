"""Behaviour cloning on a shared local Ray: tiny real runs, checkpoints, faults, evaluation."""

import csv
import json
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from rayapp.errors import RayappError
from rayapp.models import ModelSpec, build_model, load_policy, resolve_checkpoint
from rayapp.record import record
from rayapp.replay import ReplayDataset
from rayapp.train.bc import pretrain
from rayapp.train.bc_loop import _flatten, classification_metrics, load_train_state


@pytest.fixture(scope="module")
def breakout_data(ray_session, tmp_path_factory):
    """A few hundred real Breakout steps by the noisy teacher (all four actions occur)."""
    from conftest import SMOKE

    from rayapp.config import load_config

    root = tmp_path_factory.mktemp("bc")
    cfg = load_config(
        SMOKE,
        [f"run.dir={root}/rec", "record.episodes=6", "record.policy=noisy_teacher", "record.epsilon=0.3"],
    )
    record(cfg, show_progress=False)
    return cfg.data_uri


def test_models_have_one_head_per_control():
    spec = ModelSpec((4, 84, 84), (("command", 3), ("x", 16), ("y", 9)))
    net = build_model(spec)
    out = net(torch.zeros(5, 4, 84, 84, dtype=torch.uint8))
    assert [tuple(o.shape) for o in out] == [(5, 3), (5, 16), (5, 9)]
    rnn = build_model(ModelSpec((1, 84, 84), (("action", 4),), arch="cnn_lstm"))
    out, state = rnn.step(torch.zeros(2, 7, 1, 84, 84, dtype=torch.uint8))
    assert tuple(out[0].shape) == (2, 7, 4) and state[0].shape == (1, 2, 256)
    # clip padding is dropped from the loss: only masked-in steps remain
    batch = {"action": torch.tensor([[1, 2, 0]]), "mask": torch.tensor([[True, True, False]])}
    ((lg, y),) = _flatten([torch.zeros(1, 3, 4)], batch, ("action",))
    assert lg.shape == (2, 4) and y.tolist() == [1, 2]


def test_a_centred_network_subtracts_its_mean_frame_and_carries_it_in_its_weights(tmp_path):
    from rayapp.frames import FrameSpec
    from rayapp.models import save_policy
    from rayapp.rl.module import PixelQModule

    spec = ModelSpec((4, 84, 84), (("action", 4),), center=True)
    net = build_model(spec)
    mean = torch.rand(4, 84, 84)
    net.encoder.input_mean.copy_(mean)
    plain = build_model(ModelSpec((4, 84, 84), (("action", 4),)))
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if k != "encoder.input_mean"})
    x = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(net(x)[0], plain(x.float() / 255 - mean)[0], atol=1e-5)
        assert not torch.allclose(net(x)[0], plain(x)[0], atol=1e-3)  # the mean matters
    # the checkpoint keeps it; a spec written before the key existed reads as not centred
    save_policy(str(tmp_path / "p"), net, spec, FrameSpec(), {"game": "Breakout"}, {}, {})
    pol = load_policy(str(tmp_path / "p"))
    assert pol.spec.center and torch.equal(pol.state_dict["encoder.input_mean"], mean)
    old = {k: v for k, v in spec.to_json().items() if k != "center"}
    assert not ModelSpec.from_json(old).center and "input_mean" not in dict(build_model(ModelSpec.from_json(old)).named_buffers())
    # RLlib's Q-module is built from the same spec (JSON through model_config) and takes the BC weights whole
    mod = PixelQModule(observation_space=None, action_space=None, model_config={"spec": spec.to_json(), "epsilon": 0.0})
    mod.net.load_state_dict(pol.state_dict)
    assert torch.equal(mod.net.encoder.input_mean, mean)


def test_classification_metrics():
    conf = np.array([[8, 2, 0], [1, 1, 0], [0, 0, 0]])  # class 2 absent
    m = classification_metrics(conf, ["a", "b", "c"], "val")
    assert m["val/accuracy"] == pytest.approx(9 / 12)
    assert m["val/balanced_accuracy"] == pytest.approx((0.8 + 0.5) / 2)
    assert m["val/recall_b"] == pytest.approx(0.5) and "val/recall_c" not in m


def test_tiny_pretrain_two_workers_and_checkpoint_round_trip(breakout_data, smoke_cfg, tmp_path):
    cfg = smoke_cfg(f"data.uri={breakout_data}", "pretrain.epochs=2", "pretrain.batch_size=64")
    ctrl_c = signal.getsignal(signal.SIGINT)
    r = pretrain(cfg)
    # Ray Train's fit() leaves its own Ctrl+C handler (abort that run) installed: a later stage in the
    # same process (the pipeline's fine-tuning) would swallow Ctrl+C
    assert signal.getsignal(signal.SIGINT) is ctrl_c
    run = cfg.run.dir
    assert resolve_checkpoint(run) == r.checkpoint
    rows = list(csv.DictReader(open(os.path.join(run, "pretrain", "metrics.csv"))))
    assert [int(x["epoch"]) for x in rows] == [1, 2]
    for key in (
        "train/loss",
        "train/accuracy",
        "val/balanced_accuracy",
        "val/recall_NOOP",
        "train/samples_per_s",
    ):
        assert key in rows[0]
    assert float(rows[1]["train/samples"]) == pytest.approx(r.summary["splits"]["train"]["steps"], rel=0.01)
    assert any(
        f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(run, "pretrain", "tensorboard"))
    )
    assert os.path.exists(os.path.join(run, "config.pretrain.yaml"))
    # the checkpoint alone rebuilds the network; the resume state is the optimizer's, readable
    # by torch's restricted loader
    pol = load_policy(run)
    assert pol.spec.input_shape == (4, 84, 84) and pol.spec.controls == (("action", 4),)
    assert pol.game["game"] == "Breakout" and pol.action_labels() == ["NOOP", "FIRE", "RIGHT", "LEFT"]
    assert sorted(os.listdir(r.checkpoint)) == ["model.safetensors", "policy.json", "train_state.pt"]
    state = load_train_state(r.checkpoint)
    assert state["epoch"] + 1 == pol.meta["epoch"] and state["optimizer"]["state"]
    opt = torch.optim.AdamW(pol.model().parameters())
    opt.load_state_dict(state["optimizer"])
    ref = pol.model()
    ep = next(ReplayDataset(breakout_data).iter_episodes())
    from rayapp.frames import Preprocessor

    x = torch.from_numpy(Preprocessor(pol.frames, ep.obs.shape[1:])(ep.obs[:8])[:, 0])[:, None].repeat(
        1, 4, 1, 1
    )
    with torch.no_grad():
        assert torch.equal(load_policy(r.checkpoint).model()(x)[0], ref(x)[0])
    # rerunning the finished run says so instead of training again
    with pytest.raises(RayappError, match="already trained 2 epochs"):
        pretrain(cfg)
    # a resume whose optimizer state was replaced by a malicious pickle is refused on the workers,
    # with the workers' own message, and the pickle does not run
    from test_checkpoint import evil_file

    marker = tmp_path / "pwned"
    for folder in os.listdir(os.path.join(run, "pretrain")):
        if folder.startswith("checkpoint_2"):
            evil_file(os.path.join(run, "pretrain", folder, "train_state.pt"), marker)
    more = smoke_cfg(
        f"data.uri={breakout_data}", "pretrain.epochs=3", "pretrain.batch_size=64", "pretrain.max_failures=0"
    )
    with pytest.raises(RayappError, match="train_state.pt of the checkpoint being resumed is refused"):
        pretrain(more)
    assert not marker.exists()


def test_mismatched_checkpoint_fails_before_training(breakout_data, smoke_cfg, tmp_path):
    from conftest import SMOKE

    from rayapp.config import load_config

    cfg = smoke_cfg(f"data.uri={breakout_data}", "pretrain.epochs=1", "pretrain.num_workers=1")
    pretrain(cfg)
    pong = load_config(
        SMOKE, [f"run.dir={tmp_path}/pong", "env.game=Pong", "record.episodes=2", "record.policy=random"]
    )
    record(pong, show_progress=False)
    bad = load_config(SMOKE, [f"run.dir={tmp_path}/pong", f"model.init_checkpoint={cfg.run.dir}"])
    t = time.time()
    with pytest.raises(RayappError) as e:
        pretrain(bad)
    msg = str(e.value)
    assert (
        "does not match dataset" in msg
        and "actions [('action', 4)] vs [('action', 6)]" in msg
        and "game Breakout vs Pong" in msg
    )
    assert time.time() - t < 30  # refused before any training started
    assert not os.path.exists(os.path.join(tmp_path, "pong", "pretrain", "latest.json"))


def test_worker_killed_mid_epoch_resumes_from_last_checkpoint(breakout_data, smoke_cfg):
    import ray
    from ray.util.state import list_actors

    here = ray.get_runtime_context().gcs_address  # this session's Ray, even when others run on the machine

    cfg = smoke_cfg(
        f"data.uri={breakout_data}", "pretrain.epochs=4", "pretrain.batch_size=16", "data.shuffle_buffer=0"
    )
    latest = os.path.join(cfg.run.dir, "pretrain", "latest.json")
    out = {}
    t = threading.Thread(target=lambda: out.update(r=pretrain(cfg)))
    t.start()
    deadline = time.time() + 180
    while not (os.path.exists(latest) and json.load(open(latest))["epoch"] >= 1):
        assert time.time() < deadline and t.is_alive(), "no first checkpoint"
        time.sleep(0.05)
    workers = [
        a for a in list_actors(here, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    ]
    assert workers, "no training worker found"
    victim = workers[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    t.join(timeout=300)
    assert not t.is_alive()
    r = out["r"]
    rows = list(csv.DictReader(open(os.path.join(cfg.run.dir, "pretrain", "metrics.csv"))))
    epochs = [int(x["epoch"]) for x in rows]
    assert epochs[-1] == 4 and epochs.count(1) == 1, (
        f"resumed from epoch 1's checkpoint, not from scratch: {epochs}"
    )
    assert r.metrics["epoch"] >= 1
    alive = [
        a["pid"]
        for a in list_actors(here, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    ]
    assert victim not in alive


def test_pretrain_centres_inputs_on_the_training_splits_mean_frame(breakout_data, smoke_cfg, tmp_path):
    from rayapp.data.index import DatasetIndex
    from rayapp.frames import FrameSpec, Preprocessor

    cfg = smoke_cfg(f"data.uri={breakout_data}", "pretrain.epochs=1", "pretrain.num_workers=1",
                    "model.center=true", "model.center_frames=300")  # fmt: skip
    pol = load_policy(pretrain(cfg).checkpoint)
    assert pol.spec.center
    got = pol.state_dict["encoder.input_mean"].numpy()
    # the same mean, computed here from the first 300 frames of the training episodes
    ds = ReplayDataset(breakout_data)
    d = cfg.data
    index = DatasetIndex.build(ds, "action", d.val_fraction, d.test_fraction, d.split_seed)
    train = set(index.episodes("train"))
    frames = np.concatenate([e.obs for e in ds.iter_episodes() if e.episode_id in train])[:300]
    one = Preprocessor(FrameSpec.from_config(d), frames.shape[1:])(frames).mean(0) / 255.0
    assert got.shape == (4, 84, 84) and np.allclose(got, np.tile(one, (4, 1, 1)), atol=1e-5)
    assert 0.01 < got.mean() < 0.5  # Breakout: a dark screen with bricks, not zeros
    # a network started from it keeps its mean (model.center of the new run does not matter)
    more = smoke_cfg(f"data.uri={breakout_data}", "pretrain.epochs=1", "pretrain.num_workers=1",
                     f"model.init_checkpoint={pol.path}", f"run.dir={tmp_path / 'from-centred'}")  # fmt: skip
    again = load_policy(pretrain(more).checkpoint)
    assert again.spec.center and np.array_equal(again.state_dict["encoder.input_mean"].numpy(), got)


def test_run_seed_fixes_the_initial_weights(breakout_data, smoke_cfg, tmp_path):
    # run.seed is the base seed workers derive theirs from: two runs with the same seed start from
    # the same network (a 1e-12 step moves no weight by more than ~1e-10 in one epoch), so a
    # training seed is reproducible and seeds differ only where chosen
    same = []
    for k in range(2):
        cfg = smoke_cfg(f"data.uri={breakout_data}", "pretrain.epochs=1", "pretrain.num_workers=1", "pretrain.lr=1e-12",
                        "pretrain.weight_decay=0", "run.seed=3", f"run.dir={tmp_path / f'seed3-{k}'}")  # fmt: skip
        pol = load_policy(pretrain(cfg).checkpoint)
        same.append({k: v for k, v in pol.state_dict.items() if v.is_floating_point() and "running" not in k})
    assert same[0].keys() == same[1].keys() and len(same[0]) > 2
    assert all(torch.allclose(same[0][k], same[1][k], rtol=0, atol=1e-8) for k in same[0])


def test_recurrent_model_trains_on_clips(breakout_data, smoke_cfg):
    cfg = smoke_cfg(f"data.uri={breakout_data}", "pretrain.epochs=1", "pretrain.num_workers=1", "pretrain.batch_size=4",
                    "model.arch=cnn_lstm", "data.clip_length=25", "data.frame_stack=1")  # fmt: skip
    r = pretrain(cfg)
    pol = load_policy(r.checkpoint)
    assert pol.spec.recurrent and pol.spec.input_shape == (1, 84, 84)
    assert r.metrics["train/samples"] > 0


def test_evaluate_reports_scores_plot_and_video(breakout_data, smoke_cfg):
    from PIL import Image

    from rayapp.evaluate import evaluate

    cfg = smoke_cfg(f"data.uri={breakout_data}", "pretrain.epochs=1", "pretrain.num_workers=1",
                    "eval.episodes=2", "eval.max_episode_steps=150", "eval.video_steps=40")  # fmt: skip
    pretrain(cfg)
    rep = evaluate(cfg, cfg.run.dir)
    j = json.load(open(os.path.join(cfg.run.dir, "eval", "eval.json")))
    assert set(j["scores"]) == {"policy/greedy", "policy/sampled", "teacher", "random"}
    for s in j["scores"].values():
        assert s["episodes"] == 2 and len(s["per_episode"]) == 2 and all(n <= 150 for n in s["steps"])
    assert j["scores"]["teacher"]["mean"] > j["scores"]["random"]["mean"]
    assert "vs_teacher" in j["scores"]["policy/greedy"]
    gif = Image.open(os.path.join(cfg.run.dir, "eval", "gameplay.gif"))
    assert gif.n_frames == 40
    assert Image.open(os.path.join(cfg.run.dir, "eval", "scores.png")).size[0] > 300
    assert "teacher" in rep.text()


def test_record_with_a_trained_checkpoint(breakout_data, smoke_cfg, tmp_path):
    from conftest import SMOKE

    from rayapp.config import load_config
    from rayapp.errors import ConfigError

    cfg = smoke_cfg(f"data.uri={breakout_data}", "pretrain.epochs=1", "pretrain.num_workers=1")
    pretrain(cfg)
    rec = load_config(SMOKE, [f"run.dir={tmp_path}/agent", "record.policy=checkpoint", f"record.checkpoint={cfg.run.dir}",
                              "record.epsilon=0", "record.episodes=2"])  # fmt: skip
    summary = record(rec, show_progress=False)
    ds = ReplayDataset(rec.data_uri)
    assert ds.info.recorded_by["policy"] == "checkpoint" and len(summary.episodes) == 2
    # the recorded actions are the agent's own greedy choices on the recorded frames
    from rayapp.frames import FrameStacker
    from rayapp.models.agent import Agent

    agent = Agent(cfg.run.dir)
    ep = next(ds.iter_episodes())
    stack = FrameStacker(agent.ckpt.frames, ep.obs.shape[1:])
    for t in range(20):
        x = stack.reset(ep.obs[0]) if t == 0 else stack.push(ep.obs[t])
        assert agent.act(x) == ep.actions[t] == ep.extras["teacher_action"][t]
    pong = load_config(
        SMOKE,
        [
            f"run.dir={tmp_path}/pong",
            "env.game=Pong",
            "record.policy=checkpoint",
            f"record.checkpoint={cfg.run.dir}",
        ],
    )
    with pytest.raises(ConfigError, match="plays Breakout with 4 actions; env.game=Pong has 6"):
        record(pong, show_progress=False)


def skewed_teacher_dataset(path, episodes=60, steps=20, seed=0):
    """Frames that say one thing: dark or bright. The teacher_action label: NOOP on bright frames;
    on dark ones NOOP 70% and FIRE 30% of the time, so FIRE is rare overall (15%). The action
    column is always LEFT, unlike the label. Trained on teacher_action with inverse-frequency
    weights, the best prediction on dark frames is FIRE (0.3 x 3.3 > 0.7 x 0.59); without the
    weights it is NOOP, and on the action column it is LEFT."""
    from rayapp.config import EnvConfig
    from rayapp.envs.atari import dataset_info_for, make_atari_env
    from rayapp.replay import ReplayWriter, create_dataset

    env = make_atari_env(EnvConfig())
    info = create_dataset(
        str(path), dataset_info_for(env, EnvConfig(), "raw", 90, ("teacher_action",), {"policy": "synthetic"})
    )
    shape = env.observation_space.shape
    env.close()
    rng = np.random.default_rng(seed)
    dark, bright = np.full(shape, 40, np.uint8), np.full(shape, 200, np.uint8)
    with ReplayWriter(str(path), info, "w0", shard_steps=200) as w:
        for _ in range(episodes):
            w.begin_episode()
            is_dark = rng.permutation(np.arange(steps) < steps // 2)
            fire = rng.random(steps) < 0.3
            for t in range(steps):
                label = 1 if is_dark[t] and fire[t] else 0
                w.add_step(
                    dark if is_dark[t] else bright, 3, 0.0, t == steps - 1, False, teacher_action=label
                )
            w.end_episode()
    return str(path)


def test_pretrain_learns_teacher_action_with_class_weights(ray_session, smoke_cfg, tmp_path):
    from rayapp.data.index import DatasetIndex

    data = skewed_teacher_dataset(tmp_path / "skewed")
    cfg = smoke_cfg(f"data.uri={data}", "data.label=teacher_action", "data.balance=weights", "data.frame_stack=1",
                    "pretrain.epochs=3", "pretrain.num_workers=1", "pretrain.batch_size=64", "pretrain.lr=1.0e-3")  # fmt: skip
    r = pretrain(cfg)
    ingest = r.summary
    assert ingest["train_action_counts"]["FIRE"] < ingest["train_action_counts"]["NOOP"] / 3
    assert ingest["class_weights"][0][1] > 3 * ingest["class_weights"][0][0]  # FIRE weighs more than NOOP
    rows = list(csv.DictReader(open(os.path.join(cfg.run.dir, "pretrain", "metrics.csv"))))
    conf = np.array(json.loads(rows[-1]["val/confusion"]))  # rows: label, columns: prediction
    d = cfg.data
    index = DatasetIndex.build(
        ReplayDataset(data), "teacher_action", d.val_fraction, d.test_fraction, d.split_seed
    )
    assert (
        conf.sum(axis=1).tolist() == index.label_counts["val"][0].tolist()
    )  # the labels were teacher_action
    assert conf[:, 3].sum() == 0  # never the action column's LEFT
    # the weights reached the loss: FIRE is predicted on dark frames (every FIRE found), which an
    # unweighted loss never does (NOOP is likelier there)
    assert float(rows[-1]["val/recall_FIRE"]) >= 0.8, conf.tolist()
    assert float(rows[-1]["val/recall_NOOP"]) < 0.9, conf.tolist()
