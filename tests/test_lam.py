"""Latent actions end to end on tiny real data: train the LAM on Ray Train from replay shards,
label a dataset with it (Ray Data), dream, BC on latent actions, map to the real controls,
evaluate and fine-tune-ready checkpoints; and the bad inputs and interruptions around them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rayapp.cli import main
from rayapp.config import load_config
from rayapp.errors import RayappError, ReplayFormatError
from rayapp.replay.reader import ReplayDataset

ROOT = Path(__file__).resolve().parent.parent
SMOKE = str(ROOT / "configs" / "smoke.yaml")
# a model small enough for seconds on 2 cores: 42x32 frames, narrow channels, one code of 8
TINY = [
    "lam.resize=[42,32]",
    "lam.enc_channels=[8,16,16,32,32]",
    "lam.dec_channels=[32,32,16,16,8]",
    "lam.latent_dim=16",
    "lam.codes=8",
    "lam.positions=1",
    "lam.batch_size=16",
    "lam.val_batches=2",
    "lam.log_every=5",
    "lam.image_every=10",
    "lam.val_every=10",
    "lam.checkpoint_every=10",
    "lam.reset_every=10",
    "data.shuffle_buffer=64",
]


def lam_cfg(run: Path, data: str, *more: str):
    return load_config(SMOKE, [f"run.dir={run}", f"data.uri={data}", *TINY, *more])


@pytest.fixture(scope="module")
def lam_run(bc_run, tmp_path_factory):
    """20 steps of the tiny LAM on the shared smoke replays (teacher episodes with actions)."""
    from rayapp.train.lam import train_lam

    base = tmp_path_factory.mktemp("lam")
    here = os.getcwd()
    os.chdir(base)  # a relative run.dir, as users type it: the outputs land under the working directory
    try:
        cfg = lam_cfg(Path("run"), f"{bc_run}/replays", "lam.steps=20")
        ctrl_c = signal.getsignal(signal.SIGINT)
        result = train_lam(cfg)
        result.sigint_kept = signal.getsignal(signal.SIGINT) is ctrl_c  # Ray Train's fit() leaves its own
    finally:
        os.chdir(here)
    return base / "run", lam_cfg(base / "run", f"{bc_run}/replays", "lam.steps=20"), result


def test_lam_train_writes_checkpoints_metrics_and_images(lam_run):
    from rayapp.models.lam_checkpoint import load_lam

    run, cfg, result = lam_run
    assert result.sigint_kept  # Ctrl+C's handler as before training (a later stage in the process needs it)
    best = json.loads((run / "lam" / "best.json").read_text())
    assert json.loads((run / "lam" / "latest.json").read_text())["step"] == 20  # the controller's, under run.dir
    ck = load_lam(str(run))  # a run folder resolves to its best checkpoint
    assert ck.path == best["checkpoint"] == result.checkpoint
    assert ck.meta["step"] in (10, 20) and ck.spec.codes == 8 and (ck.spec.height, ck.spec.width) == (42, 32)
    rows = [line.split(",") for line in (run / "lam" / "metrics.csv").read_text().splitlines()]
    header, steps = rows[0], [int(float(r[0])) for r in rows[1:]]
    assert steps == sorted(steps) and steps[-1] == 20 and 5 in steps
    for key in ("train/recon_loss", "train/samples_per_s", "val/psnr", "val/psnr_changed_copy", "val/delta_psnr",
                "val/ssim", "val/l1", "val/l2", "val/perplexity", "val/codebook_usage"):  # fmt: skip
        assert key in header, key
    m = result.metrics
    assert 0 < m["val/psnr"] < 100 and -1 <= m["val/ssim"] <= 1 and m["val/codes_used"] >= 1
    # the pairs never cross an episode boundary: every training pair came from one episode
    assert result.pairs["train"] > 0 and result.pairs["train"] + result.pairs["val"] + result.pairs["test"] == sum(
        n - 1 for n in _episode_lengths(cfg.data_uri).values())
    # TensorBoard has the scalars, the usage histogram and the reconstruction images
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "lam" / "tensorboard"), size_guidance={"images": 0, "histograms": 0})
    acc.Reload()
    assert "val/reconstructions" in acc.Tags()["images"]
    assert "val/code_usage" in acc.Tags()["histograms"]
    assert "train/recon_loss" in acc.Tags()["scalars"]


def _episode_lengths(uri: str) -> dict[str, int]:
    return {e.episode_id: e.length for e in ReplayDataset(uri).iter_episodes(decode=False)}


def test_lam_label_writes_the_contract_and_a_report(lam_run, tmp_path):
    run, cfg, _ = lam_run
    src = cfg.data_uri
    out = tmp_path / "labelled"
    assert main(["lam", "label", "--config", SMOKE, "--set", f"run.dir={run}", "--input", src,
                 "--output", str(out), "--checkpoint", str(run)]) == 0  # fmt: skip
    ds = ReplayDataset(str(out))
    assert ds.info.latent["codes"] == 8 and ds.info.latent["vocabulary"] == 8
    assert {"latent_action", "latent_codes"} <= set(ds.info.extras)
    before = {e.episode_id: e for e in ReplayDataset(src).iter_episodes(decode=False)}
    for ep in ds.iter_episodes(decode=False):
        lat = ep.extras["latent_action"]
        assert ep.length == before[ep.episode_id].length and np.array_equal(ep.actions, before[ep.episode_id].actions)
        lat = np.asarray(lat, dtype=np.float64)  # null -> NaN
        assert np.isnan(lat[-1]), "the last step has no next frame, so no latent action"
        assert np.isfinite(lat[:-1]).all() and ((0 <= lat[:-1]) & (lat[:-1] < 8)).all()
    # read as clips for a recurrent policy: the last step (no latent action) is masked, never a target
    from rayapp.data import build_ingest
    from rayapp.data.samples import read_samples

    ingest = build_ingest(load_config(SMOKE, [f"data.uri={out}", "data.label=latent_action", "data.clip_length=16",
                                              "data.frame_stack=1", "model.arch=cnn_lstm", "data.val_fraction=0",
                                              "data.test_fraction=0"]))  # fmt: skip
    spec = ingest.read_spec(None, False, include_ids=True)
    batches = [b for t in ingest.tasks(None) for b in read_samples(spec, t)]
    mask = np.concatenate([b["mask"] for b in batches])
    codes = np.concatenate([b[spec.output_columns[0]] for b in batches])
    steps = np.concatenate([b["step"] for b in batches])
    assert (codes[mask] >= 0).all() and (codes[mask] < 8).all()
    last = {e: n - 1 for e, n in _episode_lengths(str(out)).items()}
    ids = np.concatenate([np.repeat(b["episode_id"][:, None], b["mask"].shape[1], 1) for b in batches])
    assert mask.sum() == sum(last.values()), "every step but each episode's last is a target"
    assert not any(mask[i, j] and steps[i, j] == last[ids[i, j]] for i, j in np.argwhere(mask))
    report = json.loads((run / "lam" / "label" / "report.json").read_text())
    assert report["has_actions"] and report["codes_used"] >= 1 and report["probe_pairs"][1] > 0
    assert report["mutual_information"] >= 0 and 0 <= report["probe_accuracy"] <= 1
    for f in ("code_grids.png", "code_usage.png", "code_by_action.png"):
        assert (run / "lam" / "label" / f).stat().st_size > 1000
    # a rerun into the same output keeps the shards and skips them
    from rayapp.train.lam_label import label_dataset

    again = label_dataset(load_config(SMOKE, [f"run.dir={run}", f"lam.checkpoint={run}"]), src, str(out))
    assert again.shards == 0 and again.skipped == len(ds.shards)
    # and its report still covers every shard (the codes are read back from the written ones)
    rerun = json.loads((run / "lam" / "label" / "report.json").read_text())
    for k in ("codes_used", "perplexity", "top_codes", "table", "mutual_information", "probe_pairs"):
        assert rerun[k] == report[k], k


def test_latent_bc_then_map_to_controls_evaluates_and_finetunes(lam_run, tmp_path):
    from rayapp.models.checkpoint import load_policy
    from rayapp.train.bc import pretrain
    from rayapp.train.lam_label import label_dataset
    from rayapp.train.lam_map import map_to_controls

    run, cfg, _ = lam_run
    labelled = tmp_path / "labelled"
    label_dataset(load_config(SMOKE, [f"run.dir={run}", f"lam.checkpoint={run}"]), cfg.data_uri, str(labelled))
    latent = tmp_path / "latent-bc"
    r = pretrain(load_config(SMOKE, [f"run.dir={latent}", f"data.uri={labelled}", "data.label=latent_action",
                                     "pretrain.num_workers=1"]))  # fmt: skip
    pol = load_policy(r.checkpoint)
    assert pol.spec.controls == (("latent_action", 8),)
    mapped = tmp_path / "mapped"
    summary = map_to_controls(load_config(SMOKE, [f"run.dir={mapped}", f"data.uri={cfg.data_uri}", f"lam.checkpoint={latent}",
                                                  "lam.map_episodes=1", "lam.map_epochs=1", "pretrain.num_workers=1"]))  # fmt: skip
    assert summary.result.summary["splits"]["train"]["episodes"] == 1
    real = load_policy(str(mapped))
    n_actions = ReplayDataset(cfg.data_uri).info.actions[0].n
    assert real.spec.controls == (("action", n_actions),)
    # the trunk came from the latent policy, the heads are new
    same = [k for k in pol.state_dict if not k.startswith("heads.")]
    assert same and all(k in real.state_dict for k in same)
    # evaluate plays the game with it; finetune accepts it as model.init_checkpoint (same check)
    assert main(["evaluate", "--config", SMOKE, "--set", f"run.dir={mapped}", "--set", "eval.episodes=1",
                 "--set", "eval.max_episode_steps=40", "--set", "eval.baselines=[]", "--set", "eval.video_steps=1",
                 "--checkpoint", str(mapped)]) == 0  # fmt: skip


def test_action_less_and_unlabelled_inputs_fail_before_training(bc_run, tmp_path):
    from rayapp.data.index import DatasetIndex

    ds = ReplayDataset(f"{bc_run}/replays")
    with pytest.raises(ReplayFormatError, match="no latent_action column"):
        DatasetIndex.build(ds, "latent_action")
    # single-frame episodes only: no pairs, one line naming the dataset
    from rayapp.replay.dataset import create_dataset
    from rayapp.replay.schema import DatasetInfo, ObservationSpec
    from rayapp.replay.writer import ReplayWriter
    from rayapp.train.lam import train_lam

    single = tmp_path / "single"
    info = DatasetInfo("Breakout", "ALE/Breakout-v5", ObservationSpec((210, 160, 3)), ds.info.actions, 15.0)
    create_dataset(str(single), info)
    with ReplayWriter(str(single), info, "w0") as w:
        for _ in range(3):
            w.begin_episode()
            w.add_step(np.zeros((210, 160, 3), np.uint8), 0, 0.0, True, False)
            w.end_episode()
    with pytest.raises(RayappError, match=r"no frame pairs.*3 of its 3 episodes have a single frame"):
        train_lam(lam_cfg(tmp_path / "r", str(single), "lam.steps=2"))


def test_a_shard_of_another_frame_size_is_named_before_training(bc_run, tmp_path):
    from rayapp.errors import CorruptShardError
    from rayapp.replay.dataset import create_dataset
    from rayapp.replay.schema import DatasetInfo, ObservationSpec
    from rayapp.replay.writer import ReplayWriter
    from rayapp.train.lam import train_lam

    mixed = tmp_path / "mixed"
    shutil.copytree(f"{bc_run}/replays", mixed)
    other = tmp_path / "other"
    info = DatasetInfo("Breakout", "ALE/Breakout-v5", ObservationSpec((105, 80, 3)), ReplayDataset(str(mixed)).info.actions, 15.0)
    create_dataset(str(other), info)
    with ReplayWriter(str(other), info, "zz") as w:
        w.begin_episode()
        for _ in range(3):
            w.add_step(np.zeros((105, 80, 3), np.uint8), 0, 0.0, False, False)
        w.end_episode()
    shard = next((other / "shards").glob("*.parquet"))
    shutil.copy(shard, mixed / "shards" / shard.name)
    with pytest.raises(CorruptShardError, match=r"zz-00000.parquet.*observation shape \[105, 80, 3\]"):
        train_lam(lam_cfg(tmp_path / "r", str(mixed), "lam.steps=2"))


@pytest.mark.own_ray
def test_lam_train_resumes_after_ctrl_c_and_the_curve_continues(bc_run, tmp_path):
    """A real `rayapp lam train` process interrupted with SIGINT after its first checkpoint, then
    rerun: it resumes from that checkpoint and the metrics continue from its step."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "rayapp.cli", "lam", "train", "--config", SMOKE, "--set", f"run.dir={run}",
            "--set", f"data.uri={bc_run}/replays", "--set", "ray.num_cpus=2", "--set", "lam.steps=400",
            *[x for o in TINY for x in ("--set", o)], "--set", "lam.checkpoint_every=5"]  # fmt: skip
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    latest = run / "lam" / "latest.json"
    deadline = time.time() + 240
    while time.time() < deadline and not (latest.exists() and json.loads(latest.read_text())["step"] >= 10):
        time.sleep(0.5)
    assert latest.exists(), proc.communicate(timeout=60)[0][-3000:]
    os.killpg(proc.pid, signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0, out[-2000:]
    stopped_at = json.loads(latest.read_text())["step"]
    assert stopped_at < 400
    args[args.index("lam.steps=400")] = f"lam.steps={stopped_at + 10}"
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"resuming {run}/lam after step {stopped_at}" in done.stdout
    steps = [int(float(line.split(",")[0])) for line in (run / "lam" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == stopped_at + 10  # continued, nothing twice


def test_workers_that_leave_no_cpu_for_the_reads_fail_fast(bc_run, tmp_path):
    """A local Ray of 2 CPUs with one 2-CPU training worker: the trainer would start and wait
    forever for read tasks that cannot be placed; the command says so instead, before training."""
    args = [sys.executable, "-m", "rayapp.cli", "lam", "train", "--config", SMOKE, "--set", f"run.dir={tmp_path}",
            "--set", f"data.uri={bc_run}/replays", "--set", "ray.num_cpus=2", "--set", "lam.cpus_per_worker=2",
            *[x for o in TINY for x in ("--set", o)]]  # fmt: skip
    done = subprocess.run(args, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}, capture_output=True, text=True,
                          timeout=180)  # fmt: skip
    assert done.returncode != 0
    assert "lam.cpus_per_worker: 1 worker(s) x 2 CPUs leave 0 of this Ray's 2 CPUs" in done.stderr, done.stderr[-2000:]
    assert "lower lam.cpus_per_worker to 1.5 or less" in done.stderr
    assert not (tmp_path / "lam" / "latest.json").exists()


def test_the_probe_holds_out_an_episode_whenever_there_are_two():
    """The probe's split by episode: the old fixed hash threshold (< 0.8 trains) put all six of
    these episodes in training, so the report had no test pairs (test_lam_label_writes_the_contract_
    and_a_report failed whenever the smoke recording's ids fell that way, about one run in four)."""
    from rayapp.train.lam_label import probe_hash
    from rayapp.train.lam_report import probe_train_mask

    ids = ["episode-001", "episode-002", "episode-004", "episode-005", "episode-006", "episode-007"]
    pairs = np.repeat([probe_hash(e) for e in ids], 50)  # 50 pairs per episode
    train = probe_train_mask(pairs)
    held = {e for e, t in zip(np.repeat(ids, 50), train, strict=True) if not t}
    assert len(held) == 1 and (~train).sum() == 50, "one whole episode held out, none split across"
    assert np.array_equal(train, probe_train_mask(pairs[::-1])[::-1]), "the same split in any order"
    many = np.array([probe_hash(f"ep-{i}") for i in range(100)])
    assert (~probe_train_mask(many)).sum() == 20
    assert probe_train_mask(np.repeat(probe_hash("only"), 9)).all(), "one episode: nothing to hold out"
