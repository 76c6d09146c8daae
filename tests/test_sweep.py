"""`rayapp sweep`: Tune trials that each fit a TorchTrainer, a crashing trial, best config, resume."""

import json
import os

import pytest
import yaml
from conftest import SMOKE

from rayapp.config import load_config
from rayapp.errors import ConfigError
from rayapp.rl.finetune import finetune
from rayapp.tune.sweep import absolute_paths, best_result, search_space, sweep


@pytest.fixture(scope="module")
def sweep_data(ray_session, tmp_path_factory):
    from conftest import SMOKE

    from rayapp.record import record

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


def test_every_path_key_and_path_value_of_the_space_is_made_absolute(tmp_path, monkeypatch):
    """Trials run in Tune's trial folders: every path-valued key (all of `path_keys`, so a new
    one is covered by marking it), and the path values of `sweep.space`, must not be relative."""
    from rayapp.config import path_keys, set_key

    monkeypatch.chdir(tmp_path)
    cfg = load_config(SMOKE)
    keys = path_keys()
    for i, key in enumerate(keys):
        set_key(cfg, key, f"rel/{i}")
    out = absolute_paths(cfg)
    for i, key in enumerate(keys):
        section, name = key.split(".")
        assert getattr(getattr(out, section), name) == str(tmp_path / "rel" / str(i)), key
        assert getattr(getattr(cfg, section), name) == f"rel/{i}"  # the caller's config is left alone
    # URIs, empty values and values naming no location stay as they are
    for key, value in [("data.uri", "s3://replays/breakout"), ("run.dir", "file:///x/y"),
                       ("model.init_checkpoint", ""), ("finetune.init_checkpoint", "none")]:  # fmt: skip
        set_key(cfg, key, value)
        section, name = key.split(".")
        assert getattr(getattr(absolute_paths(cfg), section), name) == value
    cfg = load_config(SMOKE, ["sweep.space={finetune.init_checkpoint: {grid: [bc/a, none, s3://b/c]}, "
                              "model.init_checkpoint: {choice: ['', ~/ckpt]}, pretrain.lr: {grid: [0.1]}}"])  # fmt: skip
    space = search_space(cfg)
    assert space["finetune.init_checkpoint"] == {
        "grid_search": [str(tmp_path / "bc" / "a"), "none", "s3://b/c"]
    }
    assert space["model.init_checkpoint"].categories == ["", os.path.expanduser("~/ckpt")]
    assert space["pretrain.lr"] == {"grid_search": [0.1]}


def test_a_finetune_trial_that_cannot_be_placed_fails_before_tune(ray_session, smoke_cfg):
    """A finetune trial reserves its learner, env runners and evaluation tasks: one the cluster
    (4 CPUs, no GPU) cannot hold fails at once instead of waiting forever; a GPU for the trial's
    own process is refused (its learner actor asks for the GPU)."""
    base = [
        "sweep.stage=finetune",
        "sweep.space={finetune.lr: {choice: [1.0e-4]}}",
        "finetune.eval_episodes=1",
    ]
    with pytest.raises(
        ConfigError, match=r"sweep.trial_gpus=1.0 would reserve a GPU .* finetune.use_gpu=true"
    ):
        sweep(smoke_cfg(*base, "sweep.trial_gpus=1"))
    with pytest.raises(
        ConfigError,
        match=r"reserves 7.01 CPU \(.*6 env runner\(s\) x 1.0 CPU.*\) but this Ray cluster has 4 CPU",
    ):
        sweep(smoke_cfg(*base, "finetune.num_env_runners=6"))
    with pytest.raises(ConfigError, match=r"reserves 1.01 CPU, 1 GPU \(.*1 learner actor\(s\).* has 0 GPU"):
        sweep(smoke_cfg(*base, "finetune.num_env_runners=0", "finetune.use_gpu=true"))


def test_a_sweep_ranked_by_validation_needs_a_validation_split(sweep_data, smoke_cfg):
    from rayapp.record import record

    tiny = smoke_cfg("record.episodes=1", "record.collectors=1")
    record(tiny, show_progress=False)
    # val_fraction=0: the one episode can never land in validation (its split hashes a random id)
    cfg = smoke_cfg(
        f"data.uri={tiny.data_uri}", "data.val_fraction=0.0", "sweep.space={pretrain.lr: {choice: [0.001]}}"
    )
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


def test_a_killed_sweep_driver_resumes_where_it_stopped(sweep_data, ray_session, tmp_path):
    """The default-run version of the test below: `rayapp sweep` joins the session's Ray (no Ray
    of its own to start) and is killed (SIGKILL) once its first trial has reported; its trials die
    with it. The same command again restores the experiment, keeps its trials and runs the rest."""
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "rayapp.cli", "sweep", "--config", SMOKE, "--set", f"run.dir={run}",
           "--set", f"data.uri={sweep_data}", "--set", "sweep.space={pretrain.lr: {grid: [3.0e-4, 3.0e-3]}}",
           "--set", "sweep.scheduler=fifo", "--set", "sweep.num_samples=1", "--set", "sweep.trial_cpus=0.2",
           "--set", "pretrain.num_workers=1", "--set", "pretrain.batch_size=64"]  # fmt: skip
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    t0 = time.perf_counter()
    first = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 300
    try:
        while not any(p.read_text().strip() for p in (run / "sweep").glob("*/result.json")):
            assert first.poll() is None, "the sweep ended before it could be interrupted"
            assert time.time() < deadline
            time.sleep(0.5)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    started = {p.name for p in (run / "sweep").iterdir() if p.is_dir() and p.name != "runs"}
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    print(f"killed and resumed sweep of 2 trials: {time.perf_counter() - t0:.1f} s")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "resuming the sweep" in again.stdout
    best = json.loads((run / "sweep" / "best.json").read_text())
    trials = {p.parent.name for p in (run / "sweep").glob("*/result.json") if p.read_text().strip()}
    assert len(trials) == 2 and started <= trials and best["trial_id"] in trials


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


def never_serving_policy(folder: str) -> str:
    """A policy checkpoint that always answers NOOP (its head's bias, weights zero): it never serves
    the ball, so its greedy Breakout score is 0 whatever a few learner updates do to it."""
    import torch

    from rayapp.config import Config, config_to_dict
    from rayapp.frames import FrameSpec
    from rayapp.models.checkpoint import save_policy
    from rayapp.models.nets import ModelSpec, build_model

    cfg = Config()
    frames = FrameSpec.from_config(cfg.data)
    spec = ModelSpec(frames.input_shape((210, 160, 3)), (("action", 4),), "cnn", cfg.model.hidden)
    net = build_model(spec)
    with torch.no_grad():
        net.heads[0].weight.zero_()
        net.heads[0].bias.copy_(torch.tensor([10.0, 0.0, 0.0, 0.0]))
    game = {"game": "Breakout", "env_id": "Breakout", "obs_shape": [210, 160, 3],
            "actions": [["NOOP", "FIRE", "RIGHT", "LEFT"]], "frame_rate": 15.0}  # fmt: skip
    save_policy(folder, net, spec, frames, game, config_to_dict(cfg), {"stage": "pretrain"})
    return folder


def test_the_best_finetune_trial_is_ranked_without_the_bc_point_every_trial_shares(ray_session, tmp_path):
    """Every finetune trial first reports the BC policy it starts from (the same score in each).
    Ranked over all points with it (Tune's get_best_result(scope="all"), what the sweep used),
    trials that all fall below BC name an arbitrary one best at BC's score; ranked without it, the
    trial whose own points are best wins. A real Tune run of trials reporting such curves."""
    from ray import tune

    curves = {"worse": [("bc", 50.0), ("offline", 10.0), ("online", 12.0)],
              "better": [("bc", 50.0), ("offline", 20.0), ("online", 30.0)],
              "fluke": [("bc", 50.0), ("offline", 40.0), ("online", 5.0)]}  # fmt: skip

    def trial(config):
        for step, (phase, score) in enumerate(curves[config["arm"]]):
            tune.report({"charts/eval_score": score, "phase": phase, "env_steps": step})

    results = tune.Tuner(
        trial,
        param_space={"arm": tune.grid_search(["worse", "better", "fluke"])},
        tune_config=tune.TuneConfig(metric="charts/eval_score", mode="max"),
        run_config=tune.RunConfig(name="rank", storage_path=str(tmp_path), verbose=0),
    ).fit()
    shared = results.get_best_result(metric="charts/eval_score", mode="max", scope="all")
    assert shared.metrics_dataframe["charts/eval_score"].max() == 50.0  # the old ranking: BC's score
    best, value = best_result(results, "charts/eval_score", "max")
    assert best.config["arm"] == "fluke" and value == 40.0  # its best point, one lucky evaluation
    best, value = best_result(results, "charts/eval_score", "max", scope="last")  # sweep.scope=last
    assert best.config["arm"] == "better" and value == 30.0
    assert best_result(results, "charts/eval_score", "min")[1] == 5.0
    assert best_result(results, "no/such_metric", "max") is None


def test_dqn_sweep_reports_every_evaluation_asha_stops_the_weak_and_the_best_config_reruns(
    sweep_data, tmp_path, monkeypatch
):
    """Three fine-tuning trials under ASHA (grace period: one evaluation point). Every path is
    relative, as in configs/sweep-dqn.yaml, and Tune runs each trial in its own folder.

    The trials start from a policy that never serves (greedy score 0, always); the search space is
    the evaluation's epsilon: the first trial plays randomly (eval.epsilon=1, seeded: 2 points in
    its 200 steps), the others greedily. So ASHA's cutoff is known: both greedy trials score 0 < 2
    at the first rung and are stopped there, while the first runs to the end."""
    import time

    from rayapp.models.checkpoint import load_policy

    monkeypatch.chdir(tmp_path)
    os.symlink(sweep_data, "demos")
    never_serving_policy("bc/noop")
    args = ["run.dir=run", "data.uri=demos", "finetune.init_checkpoint=bc/noop",
            "sweep.stage=finetune", "sweep.scheduler=asha", "sweep.grace_period=1", "sweep.num_samples=1",
            "sweep.space={eval.epsilon: {grid: [1.0, 0.0, 0.0]}}",
            "finetune.num_env_runners=0", "finetune.envs_per_env_runner=4", "finetune.rollout_fragment_length=8",
            "finetune.steps_per_iteration=32", "finetune.offline_updates=4", "finetune.online_steps=64",
            "finetune.eval_every_steps=32", "finetune.checkpoint_every_steps=0", "finetune.eval_episodes=1"]  # fmt: skip
    cfg = load_config(SMOKE, args)
    t0 = time.perf_counter()
    result = sweep(cfg)
    print(f"DQN sweep of 3 trials: {time.perf_counter() - t0:.1f} s")
    assert not result.errors, result.errors
    sweep_dir = tmp_path / "run" / "sweep"
    by_eps = {}
    for t in result.trials:
        rows = [
            json.loads(line) for line in (sweep_dir / t["trial_id"] / "result.json").read_text().splitlines()
        ]
        curve = json.loads((sweep_dir / "runs" / t["trial_id"] / "finetune" / "curve.json").read_text())
        # every evaluation point of the trial's curve reached Tune, in order
        assert [(r["env_steps"], r["phase"]) for r in rows] == [(p["env_steps"], p["phase"]) for p in curve]
        by_eps.setdefault(t["overrides"]["eval.epsilon"], []).append((rows, t))
    ((random_rows, random_trial),) = by_eps[1.0]
    assert [(r["phase"], r["env_steps"]) for r in random_rows] == [
        ("bc", 0),
        ("offline", 0),
        ("online", 32),
        ("final", 64),
    ]
    assert random_rows[2]["charts/eval_score"] > 0, (
        "random play scored 0 at the rung: ASHA has nothing to cut"
    )
    assert len(by_eps[0.0]) == 2
    for rows, _t in by_eps[0.0]:  # stopped by ASHA at the first rung: no final evaluation
        assert [(r["phase"], r["env_steps"]) for r in rows] == [("bc", 0), ("offline", 0), ("online", 32)]
        assert rows[-1]["charts/eval_score"] == 0.0
    assert result.best["trial_id"] == random_trial["trial_id"] and result.best["value"] > 0

    # best_config.yaml reruns from anywhere: its paths are absolute (here: a fresh run folder)
    best = yaml.safe_load((sweep_dir / "best_config.yaml").read_text())
    assert best["eval"]["epsilon"] == 1.0
    assert best["finetune"]["init_checkpoint"] == str(tmp_path / "bc" / "noop")
    assert best["data"]["uri"] == str(tmp_path / "demos")
    monkeypatch.chdir(sweep_dir)
    again = finetune(load_config(str(sweep_dir / "best_config.yaml"),
                                 [f"run.dir={tmp_path / 'rerun'}", "finetune.online_steps=0"]))  # fmt: skip
    assert [p["phase"] for p in again.curve] == ["bc", "offline"]
    assert load_policy(again.final_policy).meta["phase"] == "offline"
