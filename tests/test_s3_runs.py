"""Runs that live on object storage, as users run them: replays streamed from s3:// and run.dir on
s3:// for pretrain (and its resume), evaluate, finetune (RLlib checkpoints) and a Tune sweep,
against the loopback S3 server. One Ray run per stage, as few stages as cover the paths."""

import csv
import io
import json
import uuid

import boto3
import pytest
from conftest import SMOKE

from rayapp.cli import main


@pytest.fixture(scope="module")
def s3_data(ray_session, s3_server):
    """Six smoke episodes by the noisy teacher, recorded straight into s3://<bucket>/replays."""
    from rayapp.config import load_config
    from rayapp.record import record

    name = f"runs-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    cfg = load_config(
        SMOKE,
        [f"run.dir=s3://{name}/rec", f"data.uri=s3://{name}/replays", "record.episodes=6",
         "record.policy=noisy_teacher", "record.epsilon=0.3"],
    )  # fmt: skip
    record(cfg, show_progress=False)
    return name, cfg.data_uri


class Bucket:
    def __init__(self, endpoint, name):
        self.s3, self.name = boto3.client("s3", endpoint_url=endpoint), name

    def keys(self, prefix):
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return sorted(o["Key"] for p in pages for o in p.get("Contents", []))

    def read(self, key) -> bytes:
        return self.s3.get_object(Bucket=self.name, Key=key)["Body"].read()

    def csv(self, key):
        return list(csv.DictReader(io.StringIO(self.read(key).decode())))


def cli(*args):
    return main([args[0], "--config", SMOKE, *[x for kv in args[1:] for x in ("--set", kv)]])


def tb_steps(bucket, keys, tag):
    """The steps of `tag` in each TensorBoard event file on S3."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out = []
    for k in keys:
        local = f"/tmp/{uuid.uuid4().hex}.tfevents"
        with open(local, "wb") as f:
            f.write(bucket.read(k))
        out.append(
            sorted(e.step for e in EventFileLoader(local).Load() for v in e.summary.value if v.tag == tag)
        )
    return out


def test_metrics_of_a_resumed_run_on_s3_keep_their_history(bucket, s3_server):
    """MetricsLogger reopened on the same s3:// folder (what a resumed run does): metrics.csv keeps
    the earlier rows and the earlier TensorBoard event file stays beside the new one."""
    from rayapp.metrics import MetricsLogger

    b = Bucket(s3_server, bucket)
    for step in (1, 2):
        logger = MetricsLogger(f"s3://{bucket}/run/pretrain")
        logger.log(step, {"epoch": step, "train/loss": 1.0 / step, "val/confusion": "[[1]]"})
        logger.close()
    rows = b.csv("run/pretrain/metrics.csv")
    assert [(r["step"], r["train/loss"]) for r in rows] == [("1", "1.0"), ("2", "0.5")]
    events = b.keys("run/pretrain/tensorboard/")
    assert sorted(tb_steps(b, events, "train/loss")) == [[1], [2]]


def test_pretrain_resume_evaluate_finetune_with_run_dir_on_s3(s3_data, s3_server, capsys):
    name, data = s3_data
    b = Bucket(s3_server, name)
    run = f"s3://{name}/runs/exp"
    common = (f"run.dir={run}", f"data.uri={data}", "pretrain.num_workers=1", "pretrain.batch_size=64")
    assert cli("pretrain", *common, "pretrain.epochs=1") == 0
    keys = b.keys("runs/exp/")
    ckpts = sorted({k.split("/")[3] for k in keys if k.startswith("runs/exp/pretrain/checkpoint_2")})
    assert len(ckpts) == 1
    for f in ("model.safetensors", "policy.json", "train_state.pt"):
        assert f"runs/exp/pretrain/{ckpts[0]}/{f}" in keys
    for f in ("best.json", "latest.json", "metrics.csv", "ingest.json"):
        assert f"runs/exp/pretrain/{f}" in keys
    assert "runs/exp/config.pretrain.yaml" in keys
    best = json.loads(b.read("runs/exp/pretrain/best.json"))
    assert best["checkpoint"] == f"s3://{name}/runs/exp/pretrain/{ckpts[0]}"
    assert [r["epoch"] for r in b.csv("runs/exp/pretrain/metrics.csv")] == ["1"]
    events = [k for k in keys if k.startswith("runs/exp/pretrain/tensorboard/events.out.tfevents")]
    assert len(events) == 1

    # more epochs on the same S3 run folder: it resumes and the history on S3 keeps every row
    capsys.readouterr()
    assert cli("pretrain", *common, "pretrain.epochs=2") == 0
    out = capsys.readouterr().out
    assert f"pretrain: resuming {run}/pretrain after epoch 1 of 2" in out
    rows = b.csv("runs/exp/pretrain/metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"], "the first run's rows were lost on resume"
    assert rows[0]["train/loss"] and rows[1]["train/loss"] and rows[0]["train/loss"] != rows[1]["train/loss"]
    keys = b.keys("runs/exp/")
    events = [k for k in keys if k.startswith("runs/exp/pretrain/tensorboard/events.out.tfevents")]
    assert sorted(tb_steps(b, events, "train/loss")) == [
        [1],
        [2],
    ]  # both runs' event files, nothing overwritten
    assert json.loads(b.read("runs/exp/pretrain/latest.json"))["epoch"] == 2

    # evaluate --checkpoint <s3 run folder> loads its best checkpoint from S3
    capsys.readouterr()
    assert cli("evaluate", *common[:2], "eval.episodes=1", "eval.max_episode_steps=60", "eval.video_steps=10",
               "eval.baselines=[random]", "eval.modes=[greedy]") == 0  # fmt: skip
    ev = json.loads(b.read("runs/exp/eval/eval.json"))
    assert ev["checkpoint"].startswith(f"s3://{name}/runs/exp/pretrain/checkpoint_")
    assert "runs/exp/eval/gameplay.gif" in b.keys("runs/exp/eval/")

    # finetune on the same S3 run folder: RLlib's checkpoint and the exported policies land on S3
    ft = (*common[:2], "finetune.num_env_runners=0", "finetune.envs_per_env_runner=2", "finetune.offline_updates=10",
          "finetune.online_steps=64", "finetune.learning_starts=32", "finetune.steps_per_iteration=32",
          "finetune.checkpoint_every_steps=32", "finetune.eval_episodes=1", "finetune.eval_every_steps=0",
          "eval.max_episode_steps=60")  # fmt: skip
    assert cli("finetune", *ft) == 0
    keys = b.keys("runs/exp/finetune/")
    ckpts = sorted(
        {k.split("/")[4] for k in keys if k.startswith("runs/exp/finetune/rllib/")} - {""}
    )  # "": folder marker
    assert ckpts == ["000000032", "000000064"], ckpts  # the offline phase's (step 0) pruned: two kept
    for c in ckpts:
        for f in ("rllib_checkpoint.json", "replay_buffer.pkl", "complete.json"):
            assert f"runs/exp/finetune/rllib/{c}/{f}" in keys
    policies = sorted({k.split("/")[4] for k in keys if k.startswith("runs/exp/finetune/policies/")})
    assert {p.split("-")[0] for p in policies} == {"bc", "offline", "final"}
    for p in policies:
        assert f"runs/exp/finetune/policies/{p}/model.safetensors" in keys
    for f in ("best.json", "curve.json", "result.json", "metrics.csv"):
        assert f"runs/exp/finetune/{f}" in keys
    assert any(k.startswith("runs/exp/finetune/tensorboard/events.out.tfevents") for k in keys)
    from rayapp.models import load_policy

    assert (
        load_policy(run).meta["stage"] == "finetune"
    )  # the run folder now resolves to the fine-tuned policy
    # rerun: RLlib restores its checkpoint from S3 and carries on from its step and update counts
    first = json.loads(b.read("runs/exp/finetune/result.json"))
    assert first["env_steps"] >= 64 and first["updates"] > 10
    assert cli("finetune", *ft) == 0
    again = json.loads(b.read("runs/exp/finetune/result.json"))
    assert (again["env_steps"], again["updates"]) == (first["env_steps"], first["updates"])


def test_sweep_with_run_dir_on_s3(s3_data, s3_server):
    name, data = s3_data
    b = Bucket(s3_server, name)
    run = f"s3://{name}/runs/sweep"
    assert cli("sweep", f"run.dir={run}", f"data.uri={data}", "sweep.stage=pretrain", "sweep.scheduler=fifo",
               "sweep.space={pretrain.lr: {grid: [3.0e-4, 3.0e-3]}}", "sweep.num_samples=1",
               "sweep.max_concurrent=2", "sweep.trial_cpus=0.2", "pretrain.num_workers=1",
               "pretrain.batch_size=64") == 0  # fmt: skip
    keys = b.keys("runs/sweep/")
    best = json.loads(b.read("runs/sweep/sweep/best.json"))
    trial = best["trial_id"]
    assert best["checkpoint"].startswith(f"{run}/sweep/runs/{trial}/pretrain/checkpoint_")
    assert "runs/sweep/sweep/best_config.yaml" in keys
    trials = {k.split("/")[4] for k in keys if k.startswith("runs/sweep/sweep/runs/")} - {
        ""
    }  # "": folder marker
    assert len(trials) == 2
    for t in trials:
        assert f"runs/sweep/sweep/runs/{t}/pretrain/best.json" in keys
        assert f"runs/sweep/sweep/{t}/progress.csv" in keys and f"runs/sweep/sweep/{t}/result.json" in keys
        assert any(k.startswith(f"runs/sweep/sweep/{t}/events.out.tfevents") for k in keys)
    from rayapp.models import load_policy

    assert load_policy(best["checkpoint"]).meta["stage"] == "pretrain"
