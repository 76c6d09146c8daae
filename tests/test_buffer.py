"""The fine-tuning replay buffer: one frame per step, stacks and n-step returns built at sampling
time and cut at episode ends, DQfD's priorities, demonstrations that are never evicted, state."""

from __future__ import annotations

import numpy as np
import pytest
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from rayapp.rl.buffer import BufferFull, DemoMixEpisodeReplayBuffer
from rayapp.rl.sumtree import SumTree

K, H, W = 4, 6, 5


def frames_of(ep: int, t: int) -> np.ndarray:
    """A recognisable single frame: episode and step in its pixels."""
    return np.full((1, H, W), (ep * 50 + t) % 256, np.uint8)


def stacked(ep: int, t: int) -> np.ndarray:
    """What the env (FrameStacker) shows at step t: padded with the first frame."""
    return np.concatenate([frames_of(ep, max(0, t - j)) for j in range(K - 1, -1, -1)])


def fragments(ep: int, length: int, cut: list[int], terminated: bool) -> list[SingleAgentEpisode]:
    """One episode of `length` transitions as env-runner fragments ending at the steps in `cut`."""
    bounds = [0, *cut, length]
    out = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        out.append(SingleAgentEpisode(
            id_=f"ep{ep}", observations=[stacked(ep, t) for t in range(a, b + 1)],
            actions=[t % 3 for t in range(a, b)], rewards=[float(t) for t in range(a, b)],
            terminated=terminated and b == length, t_started=a, len_lookback_buffer=0,
        ))  # fmt: skip
    return out


def buffer(**kw) -> DemoMixEpisodeReplayBuffer:
    kw = {"capacity": 1000, "frame_channels": 1, "frame_stack": K, "online_learning_starts": 1, **kw}
    return DemoMixEpisodeReplayBuffer(**kw)


def all_rows(buf, n=400, **kw):
    return buf.sample(num_items=n, **kw)


def test_interleaved_fragments_stack_and_return_exactly_as_the_env_saw_them():
    buf = buffer(demo_ratio=0.0)
    a, b = fragments(1, 20, [5, 11], True), fragments(2, 9, [5], False)
    for e in (a[0], b[0], a[1], b[1], a[2]):  # 16 envs deliver interleaved fragments
        buf.add([e])
    assert buf.get_num_timesteps() == 20 + 9
    gamma, n = 0.9, 3
    rows = all_rows(buf, n_step=n, gamma=gamma)
    seen = set()
    for r in rows:
        obs = r.get_observations(0)
        ep = 1 if any(np.array_equal(obs, stacked(1, t)) for t in range(21)) else 2
        length, term = (20, True) if ep == 1 else (9, False)
        t = next(t for t in range(length + 1) if np.array_equal(obs, stacked(ep, t)))
        seen.add((ep, t))
        m = r.get_extra_model_outputs("n_step", 0)
        assert m == min(n, length - t)  # cut at the episode's end, never resampled away
        assert np.array_equal(r.get_observations(1), stacked(ep, t + m))
        assert r.get_rewards(0) == pytest.approx(sum(gamma**i * (t + i) for i in range(m)))
        assert r.is_terminated == (term and t + m == length)
        assert np.array_equal(r.get_extra_model_outputs("next_obs_1", 0), stacked(ep, t + 1))
        assert r.get_extra_model_outputs("terminated_1", 0) == (term and t + 1 == length)
        assert r.get_actions(0) == t % 3
    assert (1, 19) in seen and (2, 8) in seen  # the last step of each episode is drawn too


def test_a_fragment_whose_start_was_never_seen_stacks_from_its_own_history():
    buf = buffer(demo_ratio=0.0)
    buf.add([fragments(3, 12, [6], True)[1]])  # e.g. after a resume: steps 6..12 only
    for r in all_rows(buf, n_step=1):
        obs = r.get_observations(0)
        t = next(t for t in range(6, 13) if np.array_equal(obs, stacked(3, t)))
        assert np.array_equal(r.get_observations(1), stacked(3, t + 1))


def test_demonstrations_are_mixed_at_the_ratio_and_carry_batches_until_online_data_is_in():
    buf = buffer(demo_ratio=0.25, online_learning_starts=30)
    f = np.stack([frames_of(9, t) for t in range(41)])
    buf.add_demo(f, np.arange(40) % 3, np.zeros(40), terminated=True)
    rows = buf.sample(num_items=32, n_step=2)
    assert all(r.get_extra_model_outputs("is_demo", 0) == 1.0 for r in rows)
    for e in fragments(1, 40, [], False):
        buf.add([e])
    rows = buf.sample(num_items=32, n_step=2)
    assert sum(r.get_extra_model_outputs("is_demo", 0) for r in rows) == 8
    # the game-over step of a demonstration is learned from: terminal, one step
    last = np.concatenate([frames_of(9, t) for t in (37, 38, 39, 39)])
    rows = buf.sample(num_items=2000, n_step=5, demos_only=True)
    ends = [r for r in rows if np.array_equal(r.get_observations(0), np.concatenate([frames_of(9, t) for t in (36, 37, 38, 39)]))]
    assert ends and all(r.is_terminated and r.get_extra_model_outputs("n_step", 0) == 1 for r in ends)
    assert last.shape == ends[0].get_observations(1).shape


def test_priorities_keep_every_transition_drawable_with_dqfd_epsilons():
    buf = buffer(demo_ratio=0.5, priority_eps=1e-3, demo_priority_eps=1.0, alpha=1.0)
    buf.add_demo(np.stack([frames_of(9, t) for t in range(11)]), np.zeros(10), np.zeros(10), True)
    for e in fragments(1, 10, [], True):
        buf.add([e])
    buf.sample(num_items=20, n_step=1)
    buf.update_priorities(np.zeros(20))  # TD errors of zero everywhere
    on = buf.online.tree.get(np.arange(10))
    de = buf.demos.tree.get(np.arange(10))
    assert (on != 1.0).any() and np.all(on[on != 1.0] == pytest.approx(1e-3))  # epsilon_a, not 1e-12
    assert np.all(de == pytest.approx(1.0))  # epsilon_d: a demonstration with TD error 0 stays at 1
    buf.sample(num_items=20, n_step=1)
    buf.update_priorities(np.full(20, 2.0))
    de = buf.demos.tree.get(np.arange(10))
    assert (np.round(de, 6) == 3.0).any() and set(np.round(de, 6)) <= {1.0, 3.0}
    with pytest.raises(ValueError, match="TD errors"):
        buf.sample(num_items=4, n_step=1)
        buf.update_priorities(np.zeros(5))


def test_demonstrations_beyond_capacity_are_refused_and_online_data_is_overwritten():
    buf = buffer(capacity=30, demo_capacity=25)
    buf.add_demo(np.stack([frames_of(9, t) for t in range(21)]), np.zeros(20), np.zeros(20), True)
    with pytest.raises(BufferFull, match="25 frames"):
        buf.add_demo(np.stack([frames_of(8, t) for t in range(11)]), np.zeros(10), np.zeros(10), True)
    assert buf.demos.transitions == 20  # nothing of the refused one went in
    for i in range(5):
        for e in fragments(i, 10, [], True):
            buf.add([e])
    assert buf.online.transitions <= 30
    for r in buf.sample(num_items=200, n_step=3, demos_only=False):
        if r.get_extra_model_outputs("is_demo", 0) == 0.0:
            assert r.get_observations(0)[0, 0, 0] >= 2 * 50  # the oldest episodes are gone


def test_one_frame_per_buffered_step():
    buf = buffer(capacity=1000, demo_capacity=1000)
    shape = (1, 84, 84)
    buf.add_demo(np.zeros((1000, *shape), np.uint8), np.zeros(999), np.zeros(999), True)
    per_step = buf.demos.nbytes / 999
    assert 84 * 84 <= per_step <= 84 * 84 + 128  # one frame + index and priority, not 4 x 84 x 84


def test_state_round_trip_and_priorities_of_other_demonstrations_are_not_applied():
    buf = buffer(demo_ratio=0.5)
    demo = np.stack([frames_of(9, t) for t in range(31)])
    buf.add_demo(demo, np.arange(30) % 3, np.ones(30), True)
    for e in fragments(1, 25, [10], False)[:1]:
        buf.add([e])
    buf.sample(num_items=16, n_step=2)
    buf.update_priorities(np.linspace(0, 3, 16))
    state = buf.get_state()
    assert "frames" not in state["demos"]  # demonstrations are re-read, not saved
    again = buffer(demo_ratio=0.5)
    again.add_demo(demo, np.arange(30) % 3, np.ones(30), True)
    assert again.set_state(state) is True
    assert again.online.transitions == buf.online.transitions == 10
    assert np.array_equal(again.online.tree.tree, buf.online.tree.tree)
    assert np.array_equal(again.demos.tree.tree, buf.demos.tree.tree)
    for b in (buf, again):  # the open episode continues after the restore
        b.add([fragments(1, 25, [10], False)[1]])
    assert again.online.transitions == 25
    a, b = buf.sample(num_items=8, n_step=2), again.sample(num_items=8, n_step=2)
    assert [r.get_actions(0) for r in a] == [r.get_actions(0) for r in b]  # same rng stream
    other = buffer(demo_ratio=0.5)
    other.add_demo(demo[:21], np.zeros(20), np.ones(20), True)
    before = other.demos.tree.tree.copy()
    assert other.set_state(state) is False  # other demonstrations: their priorities stay fresh
    assert np.array_equal(other.demos.tree.tree, before) and other.online.transitions == 10


def test_rllib_hands_dqn_s_td_errors_to_this_buffer():
    """DQN's training step updates priorities only for `PrioritizedEpisodeReplayBuffer`s
    (an isinstance check in RLlib 2.60): this fails if that hand-over moves."""
    from ray.rllib.utils.replay_buffers.utils import update_priorities_in_episode_replay_buffer

    buf = buffer(demo_ratio=0.0, alpha=1.0)
    for e in fragments(1, 10, [], True):
        buf.add([e])
    buf.sample(num_items=4, n_step=1)
    before = buf.online.tree.total
    update_priorities_in_episode_replay_buffer(
        replay_buffer=buf, td_errors={"default_policy": {"td_error": np.full(4, 5.0)}}
    )
    assert buf.online.tree.total > before


def test_sum_tree_draws_in_proportion():
    t = SumTree(5)
    t.set(np.arange(5), [0.0, 1.0, 0.0, 3.0, 0.0])
    draws = t.sample(4000, np.random.default_rng(0))
    assert set(np.unique(draws)) == {1, 3}
    assert abs((draws == 3).mean() - 0.75) < 0.03


def test_rare_demonstrated_actions_get_their_priorities_raised():
    buf = buffer(demo_ratio=1.0, alpha=1.0, demo_action_balance=1.0, demo_priority_eps=1.0)
    actions = np.array([0] * 27 + [1] * 3)  # action 1 is 10% of the demonstrations
    buf.add_demo(np.stack([frames_of(9, t) for t in range(31)]), actions, np.zeros(30), True)
    rows = buf.sample(num_items=200, n_step=1, demos_only=True)
    buf.update_priorities(np.zeros(200))
    pr = buf.demos.tree.get(np.arange(30))
    drawn = pr != 1.0
    rare, common = pr[:30][drawn & (actions == 1)], pr[:30][drawn & (actions == 0)]
    assert len(rows) == 200 and len(rare) and len(common)
    # weights (freq)^-1 normalised to mean 1: 1/(0.9 * 2) and 1/(0.1 * 2)
    assert np.allclose(common, 1 / 1.8) and np.allclose(rare, 1 / 0.2)
    off = buffer(demo_ratio=1.0, alpha=1.0, demo_action_balance=0.0)
    off.add_demo(np.stack([frames_of(9, t) for t in range(31)]), actions, np.zeros(30), True)
    off.sample(num_items=200, n_step=1, demos_only=True)
    off.update_priorities(np.zeros(200))
    assert np.allclose(off.demos.tree.get(np.arange(30)), 1.0)


def with_lives(frags: list[SingleAgentEpisode], lost_at: set[int]) -> list[SingleAgentEpisode]:
    """The same fragments with the env's `lives` info: the transition out of step t in `lost_at`
    loses a life (infos line up with observations, as RLlib's episodes keep them)."""
    out = []
    for e in frags:
        t0 = e.t_started
        lives = [5 - sum(1 for s in lost_at if s < t) for t in range(t0, t0 + len(e) + 1)]
        out.append(SingleAgentEpisode(
            id_=e.id_, observations=e.get_observations(), actions=e.get_actions(), rewards=e.get_rewards(),
            infos=[{"lives": v} for v in lives], terminated=e.is_terminated, t_started=t0, len_lookback_buffer=0,
        ))  # fmt: skip
    return out


@pytest.mark.parametrize("on", [True, False])
def test_a_lost_life_ends_the_td_targets_through_it_online_and_in_demonstrations(on):
    """`finetune.life_loss_terminal`: no n-step return or 1-step target bootstraps past a lost life
    (online from the env's `lives` info, across fragment boundaries; in demonstrations from their
    `lives` column); the episode goes on for stacking. Off, lives change nothing."""
    from rayapp.rl.offline import lives_lost_in

    lost = {4, 5, 9}  # 5 is also a fragment's last transition
    buf = buffer(demo_ratio=0.5, life_loss_terminal=on)
    for e in with_lives(fragments(1, 15, [6], False), lost):
        buf.add([e])
    demo_lives = [5 - sum(1 for s in lost if s <= t) for t in range(15)]  # after each row's step
    demo_cuts = lives_lost_in(demo_lives)
    assert [t for t in range(15) if demo_cuts[t]] == sorted(lost)
    buf.add_demo(np.stack([frames_of(1, t) for t in range(16)]), np.arange(15) % 3, np.arange(15, dtype=float),
                 terminated=True, life_end=demo_cuts)  # fmt: skip
    gamma, n = 0.9, 3
    for demos_only in (False, True):
        rows = buf.sample(num_items=600, n_step=n, gamma=gamma, demos_only=demos_only)
        kinds = {r.get_extra_model_outputs("is_demo", 0) for r in rows}
        assert kinds == ({1.0} if demos_only else {0.0, 1.0})
        for r in rows:
            demo = r.get_extra_model_outputs("is_demo", 0) == 1.0
            obs = r.get_observations(0)
            t = next(t for t in range(16) if np.array_equal(obs, stacked(1, t)))
            m = r.get_extra_model_outputs("n_step", 0)
            cut = next((s for s in sorted(lost) if t <= s < t + n), None) if on else None
            want = min(n, 15 - t) if cut is None else cut - t + 1
            assert m == want, (t, demo)
            assert r.get_rewards(0) == pytest.approx(sum(gamma**i * (t + i) for i in range(m)))
            assert r.is_terminated == (cut is not None or (demo and t + m == 15))
            assert r.get_extra_model_outputs("terminated_1", 0) == ((on and t in lost) or (demo and t + 1 == 15))
            assert np.array_equal(r.get_observations(1), stacked(1, t + m))  # the episode's own frames


def test_life_flags_survive_the_buffer_state_and_lives_without_values_cut_nothing():
    from rayapp.rl.buffer import lives_lost
    from rayapp.rl.offline import lives_lost_in

    buf = buffer(demo_ratio=0.0, life_loss_terminal=True)
    for e in with_lives(fragments(1, 12, [], True), {3}):
        buf.add([e])
    again = buffer(demo_ratio=0.0, life_loss_terminal=True)
    again.set_state(buf.get_state())
    assert np.array_equal(again.online.life_end, buf.online.life_end) and buf.online.life_end.sum() == 1
    old = buf.get_state()
    del old["online"]["life_end"]  # a checkpoint from before the flags
    again.set_state(old)
    assert again.online.life_end.sum() == 0
    assert lives_lost([{"lives": 3}, {}]) is None and lives_lost([{"lives": 0}] * 4).tolist() == [False] * 3
    assert lives_lost_in(None) is None and lives_lost_in([5, None, 4]) is None
    assert lives_lost_in(np.array([5.0, np.nan])) is None
