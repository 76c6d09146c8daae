"""`rayapp record` on a real local Ray with real Atari games, to local disk and to a real S3 server."""

import os
import re
import signal
import threading
import time

import numpy as np
import pytest

from rayapp.config import config_to_dict
from rayapp.envs.atari import make_atari_env
from rayapp.envs.policies import make_policy
from rayapp.errors import RayappError
from rayapp.record import Collector, _describe, record
from rayapp.replay import ReplayDataset
from rayapp.replay.dataset import create_dataset
from rayapp.replay.inspect import inspect_dataset


def resimulate_and_compare(cfg, ds, summary):
    """Replay every collector's recorded actions in a fresh emulator with the collector's seed:
    every stored frame must equal the emulator's frame bit for bit, and rewards must sum to the
    score the collector reported for the episode."""
    reported = {e["episode_id"]: e for e in summary.episodes}
    by_writer = {}
    for ep in ds.iter_episodes():
        by_writer.setdefault(ep.episode_id.rsplit("-e", 1)[0], []).append(ep)
    assert sum(len(v) for v in by_writer.values()) == len(reported)
    for writer, episodes in by_writer.items():
        index = int(writer.rsplit("-c", 1)[1])
        env = make_atari_env(cfg.env)
        seed = cfg.run.seed * 10_000 + index
        for k, ep in enumerate(sorted(episodes, key=lambda e: e.episode_id)):
            obs, _ = env.reset(seed=seed if k == 0 else None)
            assert np.array_equal(ep.steps, np.arange(ep.length))
            for t in range(ep.length):
                assert np.array_equal(ep.obs[t], obs), f"{ep.episode_id} step {t}: frame differs"
                obs, r, te, tr, _ = env.step(int(ep.actions[t]))
                assert r == ep.rewards[t] and te == ep.terminated[t] and tr == ep.truncated[t]
            assert ep.complete
            assert ep.score == pytest.approx(reported[ep.episode_id]["score"])
            assert ep.length == reported[ep.episode_id]["steps"]
            assert ep.extras["score"][-1] == pytest.approx(ep.score)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_round_trip_two_collectors(where, ray_session, smoke_cfg, tmp_path, request):
    if where == "s3":
        bucket = request.getfixturevalue("bucket")
        uri = f"s3://{bucket}/breakout"
    else:
        uri = str(tmp_path / "replays")
    cfg = smoke_cfg(f"data.uri={uri}", "record.episodes=4", "record.collectors=2")
    summary = record(cfg, show_progress=False)
    assert len(summary.episodes) == 4
    assert {e["writer"] for e in summary.episodes} == {f"{summary.session}-c00", f"{summary.session}-c01"}
    ds = ReplayDataset(uri)
    assert len(ds.shards) >= 4  # smoke shards hold about one truncated episode each
    assert all(ds.validate_shard(s).ok for s in ds.shards)
    resimulate_and_compare(cfg, ds, summary)
    # the session file and the resolved config are kept beside the outputs
    assert os.path.exists(os.path.join(cfg.run.dir, "config.record.yaml"))
    rep = inspect_dataset(uri)
    assert rep.sessions == 1 and rep.ok and rep.steps == summary.steps


def test_steps_budget_and_noisy_teacher(ray_session, smoke_cfg):
    cfg = smoke_cfg(
        "record.episodes=0", "record.steps=500", "record.policy=noisy_teacher", "record.epsilon=0.5"
    )
    summary = record(cfg, show_progress=False)
    assert summary.steps >= 500
    assert summary.steps < 500 + 2 * cfg.env.max_episode_steps  # only the episodes in flight finish
    ds = ReplayDataset(cfg.data_uri)
    eps = list(ds.iter_episodes(decode=False))
    taken = np.concatenate([e.actions for e in eps])
    wanted = np.concatenate([e.extras["teacher_action"] for e in eps])
    disagree = np.mean(taken != wanted)
    assert 0.2 < disagree < 0.55  # epsilon 0.5, a random action agrees with the teacher 1 time in 4
    assert ds.info.recorded_by["policy"] == "noisy_teacher" and ds.info.recorded_by["epsilon"] == 0.5


def test_append_refused_then_allowed(ray_session, smoke_cfg):
    cfg = smoke_cfg("record.episodes=2")
    record(cfg, show_progress=False)
    from rayapp.errors import RayappError

    with pytest.raises(RayappError, match="already holds a dataset"):
        record(cfg, show_progress=False)
    more = record(smoke_cfg("record.episodes=2", "record.append=true"), show_progress=False)
    rep = inspect_dataset(cfg.data_uri)
    assert len(rep.episode_scores) == 4 and rep.sessions == 2 and rep.ok
    assert len(more.episodes) == 2


def _kill_when(predicate, pid, timeout=60):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "condition to kill never came"
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)


def test_sigkill_mid_episode_loses_at_most_the_shard_in_progress(ray_session, smoke_cfg):
    import ray

    # long teacher episodes, small shards that roll mid-episode: a kill lands inside an episode
    cfg = smoke_cfg("env.max_episode_steps=5000", "env.sticky_actions=0", "record.shard_mb=0.01",
                    "record.max_shard_mb=0.015", "record.row_group_rows=40")  # fmt: skip
    info = create_dataset(cfg.data_uri, _describe(cfg))
    actor = (
        ray.remote(Collector)
        .options(max_concurrency=2)
        .remote(config_to_dict(cfg), info.to_json(), cfg.data_uri, "k-c00", 7)
    )
    pid = ray.get(actor.pid.remote())
    ref = actor.record_episode.remote()
    shards_dir = os.path.join(cfg.data_uri, "shards")

    def two_shards_published():
        return (
            os.path.isdir(shards_dir) and sum(not n.startswith("_tmp") for n in os.listdir(shards_dir)) >= 2
        )

    _kill_when(two_shards_published, pid)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(ref, timeout=60)
    ds = ReplayDataset(cfg.data_uri)
    assert len(ds.shards) >= 2
    assert all(ds.validate_shard(s).ok for s in ds.shards), "everything published stays readable"
    (ep,) = list(ds.iter_episodes())
    assert not ep.complete  # cut by the kill
    assert ep.length >= 2 * 40
    # what was kept is exactly what the emulator produced
    env = make_atari_env(cfg.env)
    obs, _ = env.reset(seed=7)
    for t in range(ep.length):
        assert np.array_equal(ep.obs[t], obs)
        obs, *_ = env.step(int(ep.actions[t]))
    rep = inspect_dataset(cfg.data_uri)
    assert rep.ok and rep.complete == 0 and len(rep.episode_scores) == 1


def test_record_replaces_a_killed_collector_and_finishes(ray_session, smoke_cfg):
    import ray

    # episodes long enough that the kill lands inside one: at 400 steps the six episodes were all
    # recorded, on this machine, before the 0.3 s below had passed (the kill found no process)
    cfg = smoke_cfg("record.episodes=6", "env.max_episode_steps=2000")
    result = {}
    t = threading.Thread(target=lambda: result.update(summary=record(cfg, show_progress=False)))
    t.start()
    deadline = time.time() + 60
    victim = None
    while victim is None and time.time() < deadline:
        names = [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("rayapp-collector-")
        ]
        victim = sorted(names)[0] if names else None
        time.sleep(0.02)
    assert victim, "no collector came up"
    actor = ray.get_actor(victim)
    pid = ray.get(actor.pid.remote())
    time.sleep(0.3)  # inside its first episode
    os.kill(pid, signal.SIGKILL)
    t.join(timeout=180)
    summary = result["summary"]
    assert len(summary.collectors_lost) == 1 and summary.collectors_lost[0] in victim
    assert len(summary.episodes) == 6  # the lost episode was recorded again by a replacement
    rep = inspect_dataset(cfg.data_uri)
    assert rep.ok
    assert set(summary.episodes[i]["episode_id"] for i in range(6)) <= set(rep.episode_scores)


def _first_collector(timeout=60):
    import ray

    deadline = time.time() + timeout
    while time.time() < deadline:
        names = sorted(
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("rayapp-collector-")
        )
        if names:
            return names[0]
        time.sleep(0.02)
    raise AssertionError("no collector came up")


def test_killed_collector_loses_its_unpublished_episodes_and_they_are_recorded_again(
    ray_session, smoke_cfg, monkeypatch
):
    import json

    import ray

    import rayapp.record as record_module

    # one collector, shards large enough for every episode: finished episodes wait in its open shard
    cfg = smoke_cfg("record.episodes=5", "record.collectors=1", "env.max_episode_steps=300",
                    "record.shard_mb=64", "record.shard_steps=100000")  # fmt: skip
    returned = []
    two_returned = threading.Event()
    update = record_module.Progress.update

    def counting_update(self, n=1, **postfix):  # the real progress bar, counted
        update(self, n, **postfix)
        returned.append(n)
        if len(returned) == 2:
            two_returned.set()

    monkeypatch.setattr(record_module.Progress, "update", counting_update)
    result = {}
    t = threading.Thread(target=lambda: result.update(summary=record(cfg, show_progress=True)))
    t.start()
    victim = _first_collector()
    pid = ray.get(ray.get_actor(victim).pid.remote())
    assert two_returned.wait(120)
    # two finished episodes in its unpublished shard; the third not begun or half played
    os.kill(pid, signal.SIGKILL)
    t.join(timeout=180)
    summary = result["summary"]
    rep = inspect_dataset(cfg.data_uri)
    assert rep.ok
    # the summary counts exactly the episodes the dataset holds: none of the dead collector's
    assert {e["episode_id"] for e in summary.episodes} == set(rep.episode_scores)
    assert len(summary.episodes) == 5  # the lost ones were recorded again by the replacement
    dead = victim.removeprefix("rayapp-collector-")
    assert dead.endswith("-c00") and summary.collectors_lost == [dead]
    assert {e["writer"] for e in summary.episodes} == {dead[: -len("c00")] + "c01"}
    assert summary.episodes_lost == 2
    assert "2 finished episode(s) lost with them and recorded again" in summary.line()
    (session,) = os.listdir(os.path.join(cfg.data_uri, "sessions"))
    saved = json.loads(open(os.path.join(cfg.data_uri, "sessions", session)).read())
    assert [e["episode_id"] for e in saved["episodes"]] == [e["episode_id"] for e in summary.episodes]
    assert saved["episodes_lost"] == 2


def test_storage_gone_mid_recording_ends_in_one_line_and_keeps_what_was_published(
    ray_session, own_s3, tmp_path, capfd
):
    from conftest import SMOKE

    from rayapp import cli

    uri = f"s3://{own_s3.bucket}/breakout"
    base = ["record", "--config", SMOKE, "--set", f"run.dir={tmp_path / 'run'}", "--set", f"data.uri={uri}",
            "--set", "record.collectors=1", "--set", "env.max_episode_steps=100"]  # fmt: skip
    args = base + ["--set", "record.episodes=200"]
    result = {}
    t = threading.Thread(target=lambda: result.update(rc=cli.main(args)))
    t.start()
    deadline = time.time() + 120
    while sum(".parquet" in k and "/_tmp-" not in k for k in own_s3.keys(own_s3.bucket)) < 2:
        assert time.time() < deadline and t.is_alive(), "no shards were published"
        time.sleep(0.05)
    own_s3.stop()  # the endpoint dies mid-recording
    t0 = time.time()
    t.join(timeout=120)
    assert not t.is_alive()
    assert result["rc"] == 1
    assert time.time() - t0 < 30  # bounded retries, not a hang
    last = capfd.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"rayapp record: error: recording stopped: {uri}/shards/"), last
    assert f".parquet: cannot reach the S3 endpoint {own_s3.endpoint}; check AWS_ENDPOINT_URL" in last
    assert "(gave up after 3 attempts in" in last
    assert f"published before are kept in {uri}" in last
    assert "rerun with record.append=true once the storage is back" in last
    # the server back (moto keeps its state): everything published is whole and readable
    own_s3.start()
    ds = ReplayDataset(uri)
    assert len(ds.shards) >= 2 and ds.leftovers == []
    assert all(ds.validate_shard(s).ok for s in ds.shards)
    episodes = list(ds.iter_episodes(decode=False))
    assert all(ep.complete and ep.length == 100 for ep in episodes)
    kept = re.search(r"; (\d+) episodes in (\d+) shards published before are kept", last)
    # the server may stop after a shard's copy took effect but before its answer came: the line says
    # so, and that shard is the one more in the dataset (test_publish_in_doubt.py makes it happen)
    in_doubt = "; the shard may have been published before the connection dropped;" in last
    assert kept and int(kept[2]) == len(ds.shards) - in_doubt, last
    assert int(kept[1]) == len(episodes) if not in_doubt else int(kept[1]) <= len(episodes)
    # and recording resumes into the same dataset
    rc = cli.main(base + ["--set", "record.episodes=2", "--set", "record.append=true"])
    assert rc == 0
    assert len(list(ReplayDataset(uri).iter_episodes(decode=False))) == len(episodes) + 2


def test_shards_published_by_an_episode_that_then_failed_are_still_reported(own_s3, smoke_cfg):
    """The storage goes away mid-episode just after the writer published a shard: the episode's
    call fails, yet that shard (and the episode that ended in it) is reported and kept. Before the
    fix the driver never heard of it, and its error line undercounted what was kept (CI, stop 23)."""
    import gymnasium as gym

    from rayapp.errors import StorageError
    from rayapp.record import RecordSummary, _Ledger

    uri = f"s3://{own_s3.bucket}/breakout"
    # long episodes, small shards that roll mid-episode (as in the SIGKILL test above)
    cfg = smoke_cfg(f"data.uri={uri}", "env.max_episode_steps=400", "env.sticky_actions=0", "record.shard_mb=0.01",
                    "record.max_shard_mb=0.015", "record.row_group_rows=40")  # fmt: skip
    info = create_dataset(uri, _describe(cfg))
    col = Collector(config_to_dict(cfg), info.to_json(), uri, "f-c00", 7)

    class StorageDiesAfterAShardRolls(gym.Wrapper):
        """The real server stops the step after the first shard published inside an episode
        after the first one (the first episode's call returns normally)."""

        def __init__(self, env):
            super().__init__(env)
            self.published_at_reset, self.resets = 0, 0

        def reset(self, **kw):
            self.published_at_reset, self.resets = len(col.writer.shards), self.resets + 1
            return self.env.reset(**kw)

        def step(self, action):
            if self.resets > 1 and len(col.writer.shards) > self.published_at_reset and own_s3.running:
                own_s3.stop()
            return self.env.step(action)

    col.env = StorageDiesAfterAShardRolls(col.env)
    ledger = _Ledger(RecordSummary(uri, "f"))
    with pytest.raises(StorageError):
        for _ in range(3):  # the second episode rolls a shard, the server stops, its next roll fails
            ledger.finished(col.record_episode())
    assert not own_s3.running
    reported_before = len(ledger.summary.shards)
    ledger.published("f-c00", col.unreported())
    assert len(ledger.summary.shards) == reported_before + 1, "the shard the failed call published"
    assert col.unreported() == [], "reported once"
    own_s3.start()
    ds = ReplayDataset(uri)
    assert sorted(s["uri"] for s in ledger.summary.shards) == sorted(s.uri for s in ds.shards)
    complete = [ep.episode_id for ep in ds.iter_episodes(decode=False) if ep.complete]
    assert complete and [e["episode_id"] for e in ledger.summary.episodes] == complete


def test_teacher_beats_random_by_a_wide_margin():
    """Breakout, 1,500-step cap: the teacher scores tens of points, random about 1-2."""
    from rayapp.config import EnvConfig, RecordConfig

    env = make_atari_env(EnvConfig(max_episode_steps=1500))

    def play(policy_name, episodes):
        policy = make_policy(RecordConfig(policy=policy_name), "Breakout", env, np.random.default_rng(1))
        scores = []
        for e in range(episodes):
            obs, _ = env.reset(seed=100 + e)
            policy.reset()
            score, done = 0.0, False
            while not done:
                obs, r, te, tr, _ = env.step(policy.act(obs)[0])
                score += r
                done = te or tr
            scores.append(score)
        return np.array(scores)

    teacher, rand = play("teacher", 3), play("random", 6)
    print(f"teacher {teacher} random {rand}")
    # Measured here: teacher 30-60 per episode within the cap, random 0-4 (mean ~1.5).
    assert teacher.mean() >= 20
    assert teacher.mean() >= 8 * max(rand.mean(), 1.0)
    assert teacher.min() > rand.max()


def test_collectors_go_where_the_custom_resource_is(ray_session, smoke_cfg):
    # game PCs join the cluster with a custom resource; collectors ask for it. On this one-node
    # cluster the head's built-in resource stands in for it: the request reaches Ray and is met.
    cfg = smoke_cfg(
        "record.episodes=1",
        "record.collectors=1",
        "record.collector_resources={node:__internal_head__: 0.01}",
    )
    assert len(record(cfg, show_progress=False).episodes) == 1
    # a resource no node offers fails at once, naming it, before anything is written
    cfg = smoke_cfg("record.episodes=1", "record.collectors=1", "record.collector_resources={game_pc: 1}")
    cfg.data.uri = cfg.data_uri + "-gamepc"
    with pytest.raises(
        RayappError,
        match=r"record.collector_resources: this Ray cluster offers 0 'game_pc'.*ray start --address",
    ):
        record(cfg, show_progress=False)
    assert not os.path.exists(cfg.data.uri)


@pytest.mark.parametrize("game,min_gap", [("Pong", 3.0), ("Freeway", 15.0)])
def test_the_other_games_teachers_beat_random(game, min_gap):
    """Whole episodes (Pong: first to 21, about 5,000 steps; Freeway: 2,048 steps); this test prints
    both scores (here: Pong teacher -16 against random -20, Freeway 21 against 0). Pong's teacher
    is weak with sticky actions (benchmarks/beat_teacher.py: -12.9 over 30 episodes): beating it
    is the fine-tuning's job."""
    from rayapp.config import EnvConfig, RecordConfig

    env = make_atari_env(EnvConfig(game=game))

    def play(policy_name):
        policy = make_policy(RecordConfig(policy=policy_name), game, env, np.random.default_rng(1))
        obs, _ = env.reset(seed=7)
        policy.reset()
        score, done = 0.0, False
        while not done:
            obs, r, te, tr, _ = env.step(policy.act(obs)[0])
            score, done = score + r, te or tr
        return score

    teacher, rand = play("teacher"), play("random")
    print(f"{game}: teacher {teacher} random {rand}")
    assert teacher >= rand + min_gap
