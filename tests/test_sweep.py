"""`rayapp sweep`: Tune trials that each fit a TorchTrainer, a crashing trial, best config, resume."""

import json

import pytest
import yaml

from rayapp.config import load_config
from rayapp.errors import ConfigError
from rayapp.tune.sweep import search_space, sweep


@pytest.fixture(scope="module")
def sweep_data(ray_session, tmp_path_factory):
    from conftest import SMOKE

    from rayapp.replay.record import record

    root = tmp_path_factory.mktemp("sweep")
    cfg = load_config(SMOKE, [f"run.dir={root}/rec", "record.episodes=4", "record.policy=noisy_teacher"])
    record(cfg, show_progress=False)
    return cfg.data_uri


def test_bad_search_spaces_fail_before_ray(smoke_cfg):
    for space, words in [
        ("{}", "sweep.space is empty"),
        ("{pretrain.lrr: {choice: [0.1]}}", "pretrain.lrr"),
        ("{pretrain.lr: {normal: [0, 1]}}", "unknown kind 'normal'"),
        ("{pretrain.lr: {loguniform: [a, b]}}", "bad bounds"),
        ("{pretrain.batch_size: {choice: [big]}}", "pretrain.batch_size"),
    ]:
        cfg = smoke_cfg(f"sweep.space={space}")
        with pytest.raises(ConfigError, match=words.replace("[", r"\[")):
            search_space(cfg)


def test_a_sweep_ranked_by_validation_needs_a_validation_split(sweep_data, smoke_cfg):
    from rayapp.replay.record import record

    tiny = smoke_cfg("record.episodes=1", "record.collectors=1")
    record(tiny, show_progress=False)
    cfg = smoke_cfg(f"data.uri={tiny.data_uri}", "sweep.space={pretrain.lr: {choice: [0.001]}}")
    with pytest.raises(ConfigError, match="needs a validation split, but none of the 1 episodes"):
        sweep(cfg)


def test_sweep_survives_a_crashing_trial_saves_the_best_and_resumes(sweep_data, smoke_cfg, tmp_path, capsys):
    # three trials: two learning rates, and one whose init checkpoint does not exist (it crashes inside
    # the trial, after the search space was validated); the crash must not stop the sweep
    space = "{pretrain.lr: {grid: [3.0e-4, 3.0e-3]}, model.init_checkpoint: {grid: ['', /nonexistent/ckpt]}}"
    cfg = smoke_cfg(
        f"data.uri={sweep_data}",
        f"sweep.space={space}",
        "sweep.stage=pretrain",
        "sweep.scheduler=fifo",
        "sweep.num_samples=1",
        "sweep.max_concurrent=1",
        "sweep.trial_cpus=0.2",
        "pretrain.num_workers=1",
        "pretrain.batch_size=64",
    )
    result = sweep(cfg)
    statuses = sorted(t["status"] for t in result.trials)
    assert statuses == ["ERROR", "ERROR", "done", "done"], result.trials
    assert len(result.errors) == 2 and all("/nonexistent/ckpt" in e for e in result.errors)
    best = result.best
    assert best["overrides"]["model.init_checkpoint"] == "" and best["overrides"]["pretrain.lr"] in (
        3e-4,
        3e-3,
    )
    done = [t for t in result.trials if t["status"] == "done"]
    assert best["value"] == max(t["value"] for t in done)
    assert best["checkpoint"] and best["run_dir"].endswith(best["trial_id"])

    sweep_dir = tmp_path / "run" / "sweep"
    saved = json.loads((sweep_dir / "best.json").read_text())
    assert saved["trial_id"] == best["trial_id"]
    best_cfg = yaml.safe_load((sweep_dir / "best_config.yaml").read_text())
    assert best_cfg["pretrain"]["lr"] == best["overrides"]["pretrain.lr"]
    # trial folders are named by trial id and hold TensorBoard-readable results
    trial_dir = sweep_dir / best["trial_id"]
    assert (trial_dir / "progress.csv").exists() and list(trial_dir.glob("events.out.tfevents.*"))
    # the best config runs as is: it loads back through the normal config path
    load_config(str(sweep_dir / "best_config.yaml"))

    # the same command again resumes the experiment instead of starting over
    capsys.readouterr()
    again = sweep(cfg)
    assert "resuming the sweep" in capsys.readouterr().out
    assert len(again.trials) == 4 and {t["trial_id"] for t in again.trials} == {
        t["trial_id"] for t in result.trials
    }
    assert again.best["value"] == best["value"]  # finished trials are not rerun (ties may swap the pick)


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_where_it_stopped(sweep_data, tmp_path):
    """`rayapp sweep` killed (SIGKILL, its own local Ray with it) after the first trial finished;
    the same command again restores the experiment, keeps the finished trial and runs the rest."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import SMOKE

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "rayapp.cli", "sweep", "--config", SMOKE, "--set", f"run.dir={run}",
           "--set", f"data.uri={sweep_data}", "--set", "sweep.space={pretrain.lr: {grid: [3.0e-4, 1.0e-3, 3.0e-3]}}",
           "--set", "sweep.scheduler=fifo", "--set", "sweep.num_samples=1", "--set", "pretrain.num_workers=1",
           "--set", "pretrain.batch_size=64"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray
    first = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 600
    try:
        while not list((run / "sweep").glob("*/result.json")) or not any(
            p.read_text().strip() for p in (run / "sweep").glob("*/result.json")
        ):
            assert first.poll() is None, "the sweep ended before it could be interrupted"
            assert time.time() < deadline
            time.sleep(2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "resuming the sweep" in again.stdout
    best = json.loads((run / "sweep" / "best.json").read_text())
    trials = [p.parent.name for p in (run / "sweep").glob("*/result.json")]
    assert len(trials) == 3 and best["trial_id"] in trials
