"""DQN fine-tuning on a shared local Ray: the BC network inside RLlib, the offline phase, the
demo/online mix, checkpoints, env-runner faults, bad inputs. Tiny real runs on real Breakout."""

import os
import signal
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import SMOKE

from rayapp.errors import RayappError
from rayapp.rl.checkpoints import latest_checkpoint
from rayapp.rl.finetune import build_algorithm, finetune, init_policy, load_into, module_state, q_spec
from rayapp.rl.offline import demo_episodes


def cfg_for(run, *overrides):
    from rayapp.config import load_config

    return load_config(
        SMOKE, [f"run.dir={run}", "finetune.num_env_runners=0", "finetune.eval_episodes=0", *overrides]
    )


def algo_from_bc(cfg):
    """The DQfD algorithm as `finetune` builds it: the BC network (plus its Q-spec), weights, demos."""
    pol = init_policy(cfg)
    algo = build_algorithm(cfg, q_spec(cfg, pol.spec), pol.frames)
    load_into(algo, pol.state_dict)
    for e in demo_episodes(cfg.data_uri, pol.frames):
        algo.add_demo(e.frames, e.actions, e.rewards, e.terminated)
    return algo


def stacked(e, k: int = 4) -> np.ndarray:
    """A demonstration's observations as the env stacks them (padded with the first frame)."""
    from rayapp.data.samples import stack_indices

    t = len(e.frames) - 1
    idx = stack_indices(np.zeros(t, np.int64), np.arange(t), k)
    return e.frames[idx].reshape(t, -1, *e.frames.shape[2:])


def test_q_module_starts_as_the_bc_network(bc_run):
    cfg = cfg_for(bc_run)
    pol = init_policy(cfg)
    algo = build_algorithm(cfg, pol.spec, pol.frames)
    try:
        load_into(algo, pol.state_dict)
        frames = np.stack([stacked(e)[0] for e in list(demo_episodes(cfg.data_uri, pol.frames))[:1]] * 3)
        x = torch.from_numpy(np.stack([ep for ep in frames]))
        bc = pol.model()
        learner_mod = algo.learner_group._learner.module["default_policy"]
        from ray.rllib.core.columns import Columns

        with torch.no_grad():
            want = bc(x)[0]
            assert torch.allclose(learner_mod.compute_q_values({Columns.OBS: x})["qf_preds"], want)
            assert torch.allclose(
                learner_mod.forward_target({Columns.OBS: x})["qf_preds"], want
            )  # target net too
            runner_mod = algo.env_runner_group.local_env_runner.module
            assert torch.allclose(runner_mod.compute_q_values({Columns.OBS: x})["qf_preds"], want)
            # acting is greedy on the same values
            greedy = runner_mod.forward_inference({Columns.OBS: x})[Columns.ACTIONS]
            assert torch.equal(greedy, want.argmax(-1))
        assert all(np.array_equal(module_state(algo)[k], v.numpy()) for k, v in pol.state_dict.items())
    finally:
        algo.stop()


def test_offline_phase_learns_from_demonstrations(bc_run):
    """From scratch, a few hundred offline updates on ~600 transitions lower the TD loss (against a
    target network held fixed, so the targets stand still) and make the greedy action agree with the
    demonstrations more than chance and more than the majority class would.

    Thresholds come from 9 seeds of this exact setup (probe of 2026-11-21): balanced recall 0.35-0.63
    (chance 0.25), accuracy 0.69-0.88 (majority class 0.61); a network that ignores the margin loss
    sits at chance. The margin weight is the default (5): with 1, one CI run stayed at chance."""
    cfg = cfg_for(
        bc_run,
        "finetune.init_checkpoint=none",
        "finetune.lr=1e-3",
        "finetune.target_update_steps=100000000",
        # uniform sampling: prioritised replay draws the transitions with the largest TD errors, so
        # the sampled loss would not estimate the loss over the demonstrations
        "finetune.priority_alpha=0",
    )
    pol = init_policy(cfg)
    assert pol is None
    from rayapp.frames import FrameSpec

    frames = FrameSpec.from_config(cfg.data)
    from rayapp.models import ModelSpec

    algo = build_algorithm(cfg, ModelSpec(frames.input_shape((210, 160, 3)), (("action", 4),)), frames)
    try:
        demos = list(demo_episodes(cfg.data_uri, frames))
        n = sum(algo.add_demo(e.frames, e.actions, e.rewards, e.terminated) for e in demos)
        assert 300 < n < 1200 and algo.demo_steps == n
        obs = torch.from_numpy(np.concatenate([stacked(e) for e in demos]))
        acts = np.concatenate([e.actions for e in demos])
        net = algo.learner_group._learner.module["default_policy"].net

        def agreement():
            """(mean recall over the demonstrated actions, accuracy): a network that always answers
            the majority action (NOOP) scores 1/4 (chance) and the majority share."""
            with torch.no_grad():
                pred = net(obs)[0].argmax(1).numpy()
            recall = float(np.mean([(pred[acts == a] == a).mean() for a in np.unique(acts)]))
            return recall, float((pred == acts).mean())

        before, _ = agreement()
        losses = []
        for _ in range(600):
            res = algo.offline_update()
            losses.append(float(res[0]["default_policy"]["qf_loss"].peek()))
        assert np.mean(losses[-60:]) < np.mean(losses[:60])
        chance = 1 / len(np.unique(acts))
        majority = np.bincount(acts).max() / len(acts)
        recall, accuracy = agreement()
        print(
            f"balanced recall {before:.3f} -> {recall:.3f} (chance {chance:.3f}); accuracy {accuracy:.3f} (majority {majority:.3f})"
        )
        assert recall > max(before, chance) + 0.05, (before, recall)
        assert accuracy > majority + 0.05, (accuracy, majority)
        assert algo.updates == 600
    finally:
        algo.stop()


def test_finetune_end_to_end_and_resume_from_the_same_step(bc_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(bc_run, run)
    cfg = cfg_for(run, "finetune.offline_updates=40", "finetune.online_steps=500", "finetune.learning_starts=100",
                  "finetune.eval_episodes=1", "finetune.eval_every_steps=250", "finetune.checkpoint_every_steps=250",
                  "eval.max_episode_steps=100")  # fmt: skip
    r = finetune(cfg)
    phases = [p["phase"] for p in r.curve]
    assert phases[:2] == ["bc", "offline"] and phases[-1] == "final"
    assert os.path.exists(os.path.join(r.policy, "model.safetensors")) and os.path.exists(
        run / "finetune" / "best.json"
    )
    rows = open(run / "finetune" / "metrics.csv").read()
    for key in (
        "losses/td_loss",
        "losses/margin_loss",
        "q/mean",
        "charts/epsilon",
        "perf/env_steps_per_s",
        "perf/learner_updates_per_s",
        "charts/eval_score",
    ):
        assert key in rows
    from rayapp.models import load_policy, resolve_checkpoint

    assert resolve_checkpoint(str(run)) == r.policy  # evaluate --checkpoint <run> finds the fine-tuned policy
    assert load_policy(r.final_policy).meta["phase"] == "final"
    steps_before = r.curve[-1]["env_steps"]
    # restore the RLlib checkpoint and continue: the step count carries on from where it stopped
    from rayapp.rl.algorithm import DQfD

    pol = init_policy(cfg)
    algo = build_algorithm(cfg, q_spec(cfg, pol.spec), pol.frames)  # the same Q-network finetune built
    try:
        algo.restore_from_path(latest_checkpoint(str(run)))
        from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME

        restored = algo.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0)
        assert restored == steps_before and algo.updates > 40
        out = algo.train()
        assert out["env_runners"]["num_env_steps_sampled_lifetime"] > steps_before
        assert isinstance(algo, DQfD)
    finally:
        algo.stop()


def test_finetune_with_a_remote_learner_actor(bc_run, tmp_path):
    """The GPU run's code path on CPU: `finetune.num_learners=1` puts the learner in its own actor,
    so the BC weights, the offline phase's updates and priorities, checkpoints and exported
    policies all go through the LearnerGroup, and the checkpoint restores into a remote learner."""
    import shutil

    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME

    from rayapp.models import load_policy

    run = tmp_path / "run"
    shutil.copytree(bc_run, run)
    small = ["finetune.num_learners=1", "finetune.offline_updates=20", "finetune.envs_per_env_runner=4",
             "finetune.rollout_fragment_length=8", "finetune.steps_per_iteration=32",
             "finetune.checkpoint_every_steps=0", "finetune.learning_starts=32"]  # fmt: skip
    cfg = cfg_for(run, *small, "finetune.online_steps=64")
    r = finetune(cfg)
    assert [p["phase"] for p in r.curve] == ["final"] and r.curve[0]["env_steps"] == 64
    assert r.curve[0]["updates"] == 20 + 64 // 4  # offline updates, then one per 4 env steps
    pol = init_policy(cfg)
    final = load_policy(r.final_policy)
    assert any(not torch.equal(final.state_dict[k], v) for k, v in pol.state_dict.items())  # it learned
    algo = build_algorithm(cfg, q_spec(cfg, pol.spec), pol.frames)
    try:
        assert algo.learner_group.is_remote
        (learner_pid,) = algo.learner_group.foreach_learner(lambda learner: os.getpid())
        assert learner_pid != os.getpid()
        algo.restore_from_path(latest_checkpoint(str(run)))
        assert algo.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME)) == 64
        assert algo.updates == 36
        # the exported policy holds the remote learner's weights
        assert all(np.array_equal(module_state(algo)[k], v.numpy()) for k, v in final.state_dict.items())
        out = algo.train()  # and training goes on from the restored state
        assert out["env_runners"]["num_env_steps_sampled_lifetime"] > 64 and algo.updates > 36
    finally:
        algo.stop()


def test_a_gpu_learner_is_a_remote_actor_and_env_runners_stay_on_cpu():
    """What a GPU run asks Ray for, checked without a GPU: the driver (on KubeRay: the CPU-only
    head) asks for none, one learner actor asks for one, env runners for none."""
    from rayapp.config import load_config
    from rayapp.errors import ConfigError
    from rayapp.frames import FrameSpec
    from rayapp.models import ModelSpec
    from rayapp.rl.algorithm import DQfD
    from rayapp.rl.dqn_config import dqn_config, resource_bundles

    cfg = load_config(
        SMOKE, ["finetune.use_gpu=true", "finetune.num_env_runners=2", "finetune.eval_episodes=0"]
    )
    frames = FrameSpec.from_config(cfg.data)
    config = dqn_config(cfg, ModelSpec(frames.input_shape((210, 160, 3)), (("action", 4),)), frames)
    assert (config.num_learners, config.num_gpus_per_learner, config.num_gpus_per_env_runner) == (1, 1, 0)
    rllib = DQfD.default_resource_request(config).bundles  # what RLlib itself would reserve
    driver, *rest = rllib
    assert driver.get("GPU", 0) == 0
    assert [b for b in rest if b.get("GPU")] == [{"GPU": 1}]  # the learner: 1 GPU ("auto" CPUs: 0)
    assert [b for b in rest if not b.get("GPU")] == [{"CPU": 1.0}, {"CPU": 1.0}]  # env runners
    # a sweep trial reserves the same learner and env-runner bundles in its placement group
    ours = resource_bundles(cfg, driver_cpus=0.01)
    assert ours[0] == {"CPU": 0.01, "GPU": 0.0}

    def nonzero(bundles):
        return sorted(({k: v for k, v in b.items() if v} for b in bundles), key=repr)

    assert nonzero(ours[1:]) == nonzero(rest)
    # without a GPU the learner stays in the driver unless asked; contradictory settings are refused
    assert load_config(SMOKE).finetune.num_learners is None
    assert (
        dqn_config(
            load_config(SMOKE), ModelSpec(frames.input_shape((210, 160, 3)), (("action", 4),)), frames
        ).num_learners
        == 0
    )
    with pytest.raises(
        ConfigError, match="finetune.use_gpu=true with finetune.num_learners=0 .* CPU-only head"
    ):
        load_config(SMOKE, ["finetune.use_gpu=true", "finetune.num_learners=0"])
    with pytest.raises(ConfigError, match="finetune.num_learners must be 0 .* or 1 .*, got 2"):
        load_config(SMOKE, ["finetune.num_learners=2"])


def test_training_continues_when_an_env_runner_is_killed(bc_run):
    cfg = cfg_for(
        bc_run,
        "finetune.num_env_runners=1",
        "finetune.cpus_per_env_runner=0.5",
        "finetune.learning_starts=64",
    )
    algo = algo_from_bc(cfg)
    try:
        algo.train()
        (pid,) = algo.env_runner_group.foreach_env_runner(lambda er: os.getpid(), local_env_runner=False)
        os.kill(pid, signal.SIGKILL)
        restarts, steps = 0, []
        deadline = time.time() + 120
        while time.time() < deadline:
            out = algo.train()  # must not raise
            steps.append(out["env_runners"].get("num_env_steps_sampled_lifetime", 0))
            restarts = out.get("fault_tolerance", {}).get("num_remote_worker_restarts", 0)
            if restarts and len(steps) > 2 and steps[-1] > steps[-2]:
                break
        assert restarts >= 1, "the env runner was not restarted"
        new_pids = algo.env_runner_group.foreach_env_runner(lambda er: os.getpid(), local_env_runner=False)
        assert new_pids and pid not in new_pids
        assert steps[-1] > steps[0], "sampling goes on after the restart"
    finally:
        algo.stop()


def test_mismatched_bc_checkpoint_is_named(bc_run):
    cfg = cfg_for(bc_run, "env.game=Pong", f"finetune.init_checkpoint={bc_run}")
    with pytest.raises(RayappError) as e:
        finetune(cfg)
    msg = str(e.value)
    assert (
        "BC checkpoint" in msg
        and "actions [('action', 4)] vs [('action', 6)]" in msg
        and "game Breakout vs Pong" in msg
    )


def test_offline_data_without_rewards(bc_run, tmp_path):
    """Imitation-only data (rewards all 0): refused with a clear message, or margin-loss only."""
    import shutil

    import pyarrow as pa

    run = tmp_path / "run"
    shutil.copytree(bc_run, run)
    for name in os.listdir(run / "replays" / "shards"):
        path = run / "replays" / "shards" / name
        t = pq.read_table(path)
        t = t.set_column(
            t.schema.get_field_index("reward"),
            t.schema.field("reward"),
            pa.array(np.zeros(t.num_rows, np.float32)),
        )
        pq.write_table(t, path, compression="zstd")
    cfg = cfg_for(run, "finetune.offline_updates=20", "finetune.online_steps=0")
    with pytest.raises(RayappError, match="has no rewards .*finetune.margin_only=true"):
        finetune(cfg)
    r = finetune(
        cfg_for(run, "finetune.offline_updates=20", "finetune.online_steps=0", "finetune.margin_only=true")
    )
    assert r.final_policy and r.history and all(np.isfinite(h["losses/margin_loss"]) for h in r.history)


def test_best_policy_is_chosen_on_selection_seeds_and_the_report_says_when_bc_won(bc_run, tmp_path):
    """The policy is chosen on the selection seeds, scored by `rayapp evaluate` on others, and when
    nothing beat the BC point the report says so. `finetune.lr=0`: the offline phase cannot change
    the network, so its point ties with the BC point, and a tie keeps BC."""
    import json
    import shutil

    from rayapp.envs.seeds import seed_purpose
    from rayapp.models import resolve_checkpoint
    from rayapp.pipeline import run_pipeline

    run = tmp_path / "run"
    shutil.copytree(bc_run, run)
    cfg = cfg_for(run, "finetune.lr=0", "finetune.offline_updates=5", "finetune.online_steps=0",
                  "finetune.eval_episodes=2", "eval.max_episode_steps=100", "eval.episodes=2", "eval.video_steps=0")  # fmt: skip
    r = finetune(cfg)
    assert [p["phase"] for p in r.curve] == ["bc", "offline"] and r.curve[0]["mean"] == r.curve[1]["mean"]
    best = json.loads((run / "finetune" / "best.json").read_text())
    assert best["checkpoint"] == r.policy == r.curve[0]["policy"] == resolve_checkpoint(str(run))
    m = best["metrics"]
    assert m["phase"] == "bc" and m["bc"] is True and m["env_steps"] == 0
    assert m["chosen_on"]["episodes"] == 2 and m["chosen_on"]["seeds"] == r.curve[0]["seeds"]
    run_pipeline(cfg, stages=["evaluate", "report"])  # the policy finetune chose, and BC beside it
    ev = json.loads((run / "eval" / "eval.json").read_text())
    played_to_select = {
        s for p in json.loads((run / "finetune" / "curve.json").read_text()) for s in p["seeds"]
    }
    played_to_report = {s for sc in ev["scores"].values() for s in sc["seeds"]}
    assert len(played_to_select) == 2 and len(played_to_report) == 2
    assert not played_to_select & played_to_report
    assert {seed_purpose(s) for s in played_to_select} == {"selection"}
    assert {seed_purpose(s) for s in played_to_report} == {"evaluation"}
    # what "sampled" meant for each network: the chosen policy is a Q-network, BC a softmax policy
    assert ev["scores"]["policy/sampled"]["mode"] == "sampled (epsilon-greedy 0.05)"
    assert ev["scores"]["bc/sampled"]["mode"] == "sampled (softmax)"
    assert ev["checkpoints"]["policy"]["phase"] == "bc" and ev["checkpoints"]["bc"]["stage"] == "pretrain"
    report = (run / "report.md").read_text()
    assert "| BC (no fine-tuned policy beat it) |" in report  # the scores table
    assert "fine-tuned agent" not in report
    lo, hi = sorted(m["chosen_on"]["seeds"])
    assert f"**BC (no fine-tuned policy beat it)**: `{best['checkpoint']}` (phase bc, env step 0)" in report
    assert f"over 2 episodes, selection seeds {lo}-{hi}" in report


def test_life_loss_terminals_need_the_recordings_lives(bc_run, tmp_path):
    """A dataset recorded without a `lives` column and `finetune.life_loss_terminal=true`: refused
    before any Ray work, naming the key and the dataset."""
    import json
    import shutil

    data = tmp_path / "replays"
    shutil.copytree(os.path.join(bc_run, "replays"), data)
    meta = json.loads((data / "dataset.json").read_text())
    meta["extras"] = [x for x in meta["extras"] if x != "lives"]
    (data / "dataset.json").write_text(json.dumps(meta))
    for name in os.listdir(data / "shards"):
        t = pq.read_table(data / "shards" / name)
        pq.write_table(t.drop_columns(["lives"]), data / "shards" / name, compression="zstd")
    cfg = cfg_for(tmp_path / "run", f"finetune.init_checkpoint={bc_run}", f"data.uri={data}",
                  "finetune.life_loss_terminal=true", "finetune.offline_updates=5", "finetune.online_steps=0")  # fmt: skip
    with pytest.raises(RayappError, match=r"life_loss_terminal needs .*replays has no 'lives' column"):
        finetune(cfg)
    assert not (tmp_path / "run" / "finetune" / "rllib").exists()


def test_select_final_names_the_last_policy_chosen_on_nothing(bc_run, tmp_path):
    """`finetune.select: final`: best.json names the run's last policy even where an earlier point
    scored as well (here the offline point ties with BC, which `best` would keep)."""
    import json
    import shutil

    from rayapp.models import resolve_checkpoint

    run = tmp_path / "run"
    shutil.copytree(bc_run, run)
    cfg = cfg_for(run, "finetune.lr=0", "finetune.offline_updates=5", "finetune.online_steps=0", "finetune.select=final",
                  "finetune.eval_episodes=2", "eval.max_episode_steps=100")  # fmt: skip
    r = finetune(cfg)
    assert [p["phase"] for p in r.curve] == ["bc", "offline"] and r.curve[0]["mean"] == r.curve[1]["mean"]
    best = json.loads((run / "finetune" / "best.json").read_text())
    assert best["checkpoint"] == r.policy == r.final_policy == r.curve[1]["policy"] == resolve_checkpoint(str(run))
    m = best["metrics"]
    assert m["phase"] == "offline" and m["bc"] is False and m["chosen_on"] is None and m["select"] == "final"
    assert m["final_score"] == r.curve[1]["mean"]  # its selection-seed score, for the record
    from rayapp.report import _choice

    said = " ".join(_choice(best, None))
    assert "**fine-tuned agent**" in said and "The final policy (`finetune.select: final`), chosen on no episodes" in said
