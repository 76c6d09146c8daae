"""DQfD inside RLlib: DQN's own training step on the demo/online buffer, the whole DQfD objective,
updates that skip non-finite gradients whole, grad_clip from config, and RLlib's seeding left alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SMOKE
from ray.rllib.core.columns import Columns
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

from rayapp.errors import RayappError
from rayapp.models.nets import build_model
from rayapp.rl.finetune import build_algorithm, finetune, init_policy, load_into, q_spec
from rayapp.rl.offline import demo_episodes


def cfg_for(run, *overrides):
    from rayapp.config import load_config

    return load_config(SMOKE, [f"run.dir={run}", "finetune.num_env_runners=0", "finetune.eval_episodes=0", *overrides])


def algo_with_demos(cfg):
    pol = init_policy(cfg)
    spec = q_spec(cfg, pol.spec)
    algo = build_algorithm(cfg, spec, pol.frames)
    load_into(algo, pol.state_dict)
    for e in demo_episodes(cfg.data_uri, pol.frames):
        algo.add_demo(e.frames, e.actions, e.rewards, e.terminated, e.life_lost)
    return algo, spec


def nets(algo, spec):
    """Copies of the learner's online and target Q-networks."""
    w = algo.learner_group.get_weights()["default_policy"]
    out = []
    for prefix in ("net.", "_target_net."):
        net = build_model(spec)
        net.load_state_dict({k[len(prefix) :]: torch.as_tensor(v) for k, v in w.items() if k.startswith(prefix)})
        out.append(net.eval())
    return out


def learner_values(results, *keys):
    return {k: float(results[0]["default_policy"][k].peek()) for k in keys}


def test_dqn_s_own_training_step_runs_on_the_demo_online_buffer(bc_run):
    from ray.rllib.algorithms.dqn import DQN

    from rayapp.rl.algorithm import DQfD
    from rayapp.rl.buffer import DemoMixEpisodeReplayBuffer
    from rayapp.rl.module import PixelQModule

    # RLlib's extension points only: no training-step fork, no "do not override" methods
    assert DQfD.training_step is DQN.training_step
    assert not {"forward_exploration", "forward_inference", "forward_train"} & set(PixelQModule.__dict__)
    cfg = cfg_for(bc_run, "finetune.demo_ratio=0.25", "finetune.learning_starts=64", "finetune.updates_per_env_step=0.25")
    algo, _ = algo_with_demos(cfg)
    try:
        assert isinstance(algo.local_replay_buffer, DemoMixEpisodeReplayBuffer)
        assert algo.local_replay_buffer.get_num_timesteps() == 0 and algo.demo_steps > 100
        assert algo.local_replay_buffer.split(32) == (32, 0)  # demonstrations carry the first batches
        seen, out = [], {}
        for _ in range(4):
            out = algo.train()
            frac = out.get("learners", {}).get("default_policy", {}).get("demo_fraction")
            if frac is not None:
                seen.append(float(frac))
        assert seen and seen[-1] == pytest.approx(8 / 32)  # then 25% of every batch
        steps = out["env_runners"][NUM_ENV_STEPS_SAMPLED_LIFETIME]
        assert algo.updates == pytest.approx(0.25 * steps, abs=2)  # updates_per_env_step exactly
        assert out["replay_buffer"]["online_steps"] > 0  # RLlib's replay metrics and timers are there
        assert any("replay_buffer" in k for k in out["timers"])
        # the last steps of demonstrations are learned from (the n-step return is cut at the end of
        # the episode, 200-step smoke episodes here, instead of the row being resampled)
        rows = algo.local_replay_buffer.sample(num_items=3000, n_step=3, gamma=0.99, demos_only=True)
        assert {1, 2} <= {r.get_extra_model_outputs("n_step", 0) for r in rows}
        algo.local_replay_buffer.update_priorities(np.zeros(3000))
    finally:
        algo.stop()


def test_the_loss_is_dqfd_s_whole_objective(bc_run):
    cfg = cfg_for(bc_run, "finetune.n_step=3", "finetune.margin_weight=2", "finetune.n_step_weight=0.5",
                  "finetune.l2_weight=1e-3", "finetune.margin=0.8")  # fmt: skip
    algo, spec = algo_with_demos(cfg)
    try:
        batch = algo.local_replay_buffer.sample(num_items=32, n_step=3, gamma=cfg.finetune.gamma, beta=0.4, demos_only=True)
        net, target = nets(algo, spec)
        t = lambda key: torch.as_tensor(np.stack([e.get_extra_model_outputs(key, 0) for e in batch]))  # noqa: E731
        obs = torch.as_tensor(np.stack([e.get_observations(0) for e in batch]))
        obs_n = torch.as_tensor(np.stack([e.get_observations(1) for e in batch]))
        a = torch.as_tensor([e.get_actions(0) for e in batch])
        r_n = torch.as_tensor([e.get_rewards(0) for e in batch], dtype=torch.float32)
        d_n = torch.as_tensor([float(e.is_terminated) for e in batch])
        w, n, g = t("weights").float(), t("n_step").float(), cfg.finetune.gamma
        with torch.no_grad():
            q = net(obs)[0]
            q_a = q.gather(1, a[:, None]).squeeze(1)

            def target_of(nxt, r, d, gamma_n):
                best = net(nxt)[0].argmax(1, keepdim=True)
                return r + gamma_n * (1 - d) * target(nxt)[0].gather(1, best).squeeze(1)

            y1 = target_of(t("next_obs_1"), t("reward_1").float(), t("terminated_1").float(), g)
            yn = target_of(obs_n, r_n, d_n, g**n)
            huber = torch.nn.functional.huber_loss
            j1 = (w * huber(q_a, y1, reduction="none")).mean()
            jn = (w * huber(q_a, yn, reduction="none")).mean()
            margins = torch.full_like(q, 0.8).scatter(1, a[:, None], 0.0)
            je = ((q + margins).max(1).values - q_a).mean()
            l2 = sum((p**2).sum() for p in net.parameters())
        assert not torch.allclose(y1, yn)  # the two targets differ: both terms are there
        res = algo.learner_group.update(episodes=batch, timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: 0})
        got = learner_values(res, "td_1_loss", "td_n_loss", "margin_loss", "l2_loss", "total_loss")
        assert got["td_1_loss"] == pytest.approx(float(j1), rel=1e-4)
        assert got["td_n_loss"] == pytest.approx(float(jn), rel=1e-4)
        assert got["margin_loss"] == pytest.approx(float(je), rel=1e-4)
        assert got["l2_loss"] == pytest.approx(float(l2), rel=1e-4)
        want = float(j1 + 0.5 * jn + 2 * je + 1e-3 * l2)
        assert got["total_loss"] == pytest.approx(want, rel=1e-4)
    finally:
        algo.stop()


def test_life_loss_terminals_come_from_real_breakout_lives_online_and_in_the_recording(bc_run):
    """`finetune.life_loss_terminal` on real Breakout: every lost life of the recording (its
    `lives` column) and of RLlib's own rollouts (the env's `lives` info, through the env runner's
    episodes) is a cut for the TD targets; off, no transition is cut."""
    from rayapp.replay.reader import ReplayDataset

    lost_in_recording = sum(
        int(np.count_nonzero(np.diff(ep.extras["lives"].astype(np.int64)) < 0))
        for ep in ReplayDataset(f"{bc_run}/replays").iter_episodes(decode=False, extras=["lives"])
        if ep.episode_id in {e for e, s in _train_split(bc_run).items() if s == "train"}
    )
    for on in (True, False):
        # random play (epsilon 1) loses lives fast; online rows stay out of updates (learning_starts)
        cfg = cfg_for(bc_run, f"finetune.life_loss_terminal={str(on).lower()}", "finetune.epsilon=1.0",
                      "finetune.learning_starts=100000", "finetune.steps_per_iteration=600")  # fmt: skip
        algo, _ = algo_with_demos(cfg)
        try:
            algo.train()
            buf = algo.local_replay_buffer
            assert buf.online.transitions >= 600
            online_cuts, demo_cuts = int(buf.online.life_end.sum()), int(buf.demos.life_end.sum())
        finally:
            algo.stop()
        if on:
            assert lost_in_recording > 0 and demo_cuts == lost_in_recording
            assert online_cuts >= 3  # random Breakout loses its 5 lives in about 180 steps
        else:
            assert online_cuts == demo_cuts == 0


def _train_split(run) -> dict:
    from rayapp.data.index import DatasetIndex
    from rayapp.replay.reader import ReplayDataset

    return DatasetIndex.build(ReplayDataset(f"{run}/replays"), "action", 0.1, 0.1, 0, 0).episode_split


def test_the_paper_s_weights_are_the_documented_defaults():
    from rayapp.config import load_config

    f = load_config(SMOKE, []).finetune
    assert (f.n_step_weight, f.margin, f.l2_weight, f.priority_eps, f.demo_priority_eps) == (1.0, 0.8, 1e-5, 1e-3, 1.0)


def test_a_non_finite_update_moves_no_weight_and_grad_clip_comes_from_config(bc_run):
    cfg = cfg_for(bc_run, "finetune.grad_clip=0.125")
    algo, spec = algo_with_demos(cfg)
    try:
        assert algo.config.grad_clip == 0.125
        buf = algo.local_replay_buffer
        sample = lambda: buf.sample(num_items=32, n_step=3, gamma=0.99, beta=0.4, demos_only=True)  # noqa: E731
        algo.learner_group.update(episodes=sample(), timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: 0})  # Adam has momentum now
        before = algo.learner_group.get_weights()["default_policy"]
        bad = sample()
        bad[0].rewards[0] = float("nan")
        res = algo.learner_group.update(episodes=bad, timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: 0})
        after = algo.learner_group.get_weights()["default_policy"]
        assert float(res[0]["default_policy"]["nonfinite_gradients"].peek()) >= 1
        assert all(np.array_equal(before[k], after[k]) for k in before)  # no step, not a zero-gradient step
        res = algo.learner_group.update(episodes=sample(), timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: 0})
        assert any(not np.array_equal(after[k], v) for k, v in algo.learner_group.get_weights()["default_policy"].items())

        def clipped_norm(learner):
            params = [p for p in learner.module["default_policy"].parameters() if p.requires_grad]
            grads = {learner.get_param_ref(p): torch.full_like(p, 3.0) for p in params}
            out = learner.postprocess_gradients_for_module(
                module_id="default_policy", config=learner.config.get_config_for_module("default_policy"),
                module_gradients_dict=grads,
            )  # fmt: skip
            return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in out.values()])))

        norms = [r.get() for r in algo.learner_group.foreach_learner(clipped_norm)]
        assert norms == [pytest.approx(0.125, rel=1e-2)]  # float32 sums over ~1.7M entries
    finally:
        algo.stop()


def test_building_the_algorithm_leaves_rllib_s_seeding_alone(bc_run):
    """RLlib's `debugging(seed=...)` turns on torch's deterministic algorithms in every process it
    seeds; the Q-module used to switch them off process-wide, the driver included."""
    torch.use_deterministic_algorithms(False)
    cfg = cfg_for(bc_run)
    pol = init_policy(cfg)
    algo = build_algorithm(cfg, q_spec(cfg, pol.spec), pol.frames)
    try:
        assert torch.are_deterministic_algorithms_enabled()
        out = algo.env_runner_group.local_env_runner.module.forward_exploration(
            {Columns.OBS: torch.zeros((2, *pol.spec.input_shape), dtype=torch.uint8)}, t=0
        )
        assert out[Columns.ACTIONS].shape == (2,) and torch.are_deterministic_algorithms_enabled()
    finally:
        algo.stop()
        torch.use_deterministic_algorithms(False)


def test_the_learner_flushes_subnormals_in_the_thread_that_updates(bc_run):
    """Adam's moments of idle weights decay into subnormal floats, which x86 computes several times
    slower (rayapp.models.numerics, benchmarks/denormals.py): the learner flushes them to zero in
    the thread its updates run in (the driver's, for the local learner)."""
    def flushed() -> bool:  # a subnormal first moment times beta1 reads as zero
        return int(torch.count_nonzero(torch.full((4,), 1e-39) * 0.9)) == 0

    torch.set_flush_denormal(False)
    assert not flushed()
    cfg = cfg_for(bc_run)
    pol = init_policy(cfg)
    algo = build_algorithm(cfg, q_spec(cfg, pol.spec), pol.frames)
    try:
        assert flushed()
    finally:
        algo.stop()
        torch.set_flush_denormal(False)


def test_demonstrations_that_do_not_fit_are_refused_with_the_key_to_raise(bc_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(bc_run, run)
    cfg = cfg_for(run, "finetune.demo_capacity=100", "finetune.online_steps=0")
    with pytest.raises(RayappError, match=r"finetune\.demo_capacity=100"):
        finetune(cfg)


def test_q_values_start_on_the_returns_scale_with_bc_s_greedy_actions(bc_run):
    """`finetune.init_action_gap` / `init_value_from_returns` on real Breakout demonstrations: the
    Q-network acts exactly as BC did, its mean top-two action gap is the asked one (BC's logits
    are far wider), and its value starts at the demonstrations' mean discounted return."""
    from rayapp.rl.init_q import calibrated_bc_state, discounted_returns, top_two_gap

    # 0.2: far below any BC's gap (the one-epoch smoke BC's is ~1.7, the Breakout benchmark's ~8)
    cfg = cfg_for(bc_run, "finetune.init_action_gap=0.2", "finetune.init_value_from_returns=true")
    pol = init_policy(cfg)
    spec = q_spec(cfg, pol.spec)
    algo = build_algorithm(cfg, spec, pol.frames)
    try:
        demos = list(demo_episodes(cfg.data_uri, pol.frames))
        for e in demos:
            algo.add_demo(e.frames, e.actions, e.rewards, e.terminated, e.life_lost)
        state, report = calibrated_bc_state(algo, pol, cfg.finetune, 4)
        load_into(algo, state)
        q_net, _ = nets(algo, spec)
        bc = build_model(pol.spec)
        bc.load_state_dict(pol.state_dict)
        obs = torch.as_tensor(np.concatenate([_stacked(e)[::7] for e in demos]))
        with torch.no_grad():
            logits, q = bc.eval()(obs)[0].numpy(), q_net(obs)[0].numpy()
    finally:
        algo.stop()
    assert np.array_equal(logits.argmax(1), q.argmax(1))  # the greedy policy is BC's
    assert top_two_gap(logits) > 0.6 and report["head_scale"] == pytest.approx(0.2 / report["bc_action_gap"])
    assert top_two_gap(q) == pytest.approx(0.2, rel=0.25)
    want = np.mean(np.concatenate([discounted_returns(e.rewards, cfg.finetune.gamma) for e in demos]))
    assert want > 0.1 and report["value_bias"] == pytest.approx(want, rel=0.25)
    assert q.mean(1) == pytest.approx(np.full(len(q), report["value_bias"]), abs=1e-4)  # V = the bias; A centred


def _stacked(e, k: int = 4) -> np.ndarray:
    from rayapp.data.samples import stack_indices

    t = len(e.frames) - 1
    idx = stack_indices(np.zeros(t, np.int64), np.arange(t), k)
    return e.frames[idx].reshape(t, -1, *e.frames.shape[2:])
