"""ReplayWriter and ReplayDataset without Ray: the contract, sharding, atomicity, corruption."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayapp.config import EnvConfig
from rayapp.envs.atari import dataset_info_for, make_atari_env
from rayapp.errors import CorruptShardError, DatasetNotFoundError, RayappError, ReplayFormatError
from rayapp.record import RECORDED_EXTRAS
from rayapp.replay import (
    ActionControl,
    DatasetInfo,
    ObservationSpec,
    ReplayDataset,
    ReplayWriter,
    create_dataset,
)
from rayapp.replay.schema import row_schema


def play(n_episodes, steps, seed=0):
    """Real Breakout frames from random play: [(frames, actions, rewards, terminated, truncated)]."""
    env = make_atari_env(EnvConfig(max_episode_steps=steps))
    rng = np.random.default_rng(seed)
    out = []
    for e in range(n_episodes):
        obs, _ = env.reset(seed=seed + e)
        frames, acts, rews, terms, truncs = [], [], [], [], []
        while True:
            a = int(rng.integers(4))
            nxt, r, te, tr, _ = env.step(a)
            frames.append(obs), acts.append(a), rews.append(r), terms.append(te), truncs.append(tr)
            obs = nxt
            if te or tr:
                break
        out.append(
            (np.stack(frames), np.array(acts), np.array(rews, np.float32), np.array(terms), np.array(truncs))
        )
    return env, out


@pytest.fixture(scope="module")
def breakout():
    return play(3, 150)


def new_dataset(path, env, extras=("score",), encoding="raw"):
    info = dataset_info_for(env, EnvConfig(), encoding, 90, extras, {"policy": "random"})
    return create_dataset(str(path), info)


def write(path, info, episodes, writer="w0", **kw):
    with ReplayWriter(str(path), info, writer, **kw) as w:
        for frames, acts, rews, terms, truncs in episodes:
            w.begin_episode()
            score = 0.0
            for f, a, r, te, tr in zip(frames, acts, rews, terms, truncs):
                score += r
                w.add_step(f, a, r, te, tr, score=score)
            w.end_episode()
    return w


def test_round_trip_bit_exact_and_in_order(tmp_path, breakout):
    env, eps = breakout
    info = new_dataset(tmp_path / "ds", env)
    w = write(tmp_path / "ds", info, eps, shard_mb=0.01, row_group_rows=64)
    assert len(w.shards) >= 2, "small shards: the episodes are spread over several"
    ds = ReplayDataset(str(tmp_path / "ds"))
    assert ds.info.dataset_id == info.dataset_id
    got = list(ds.iter_episodes())
    assert len(got) == len(eps)
    for g, (frames, acts, rews, terms, truncs) in zip(got, eps):
        assert g.obs.dtype == np.uint8 and g.obs.shape == frames.shape
        assert np.array_equal(g.obs, frames)
        assert np.array_equal(g.actions, acts)
        assert np.array_equal(g.rewards, rews)
        assert np.array_equal(g.steps, np.arange(len(frames)))
        assert np.array_equal(g.terminated, terms) and np.array_equal(g.truncated, truncs)
        assert g.complete
        assert g.extras["score"][-1] == pytest.approx(rews.sum())
    assert all(ds.validate_shard(s).ok for s in ds.shards)


def test_long_episode_spans_shards_and_is_reassembled(tmp_path, breakout):
    env, eps = breakout
    info = new_dataset(tmp_path / "ds", env)
    # max_shard_mb this small forces a shard roll inside every episode
    w = write(tmp_path / "ds", info, eps[:1], shard_mb=0.001, max_shard_mb=0.001, row_group_rows=20)
    assert len(w.shards) >= 3
    ds = ReplayDataset(str(tmp_path / "ds"))
    assert [s.seq for s in ds.shards] == list(range(len(w.shards)))
    (ep,) = list(ds.iter_episodes())
    assert np.array_equal(ep.obs, eps[0][0])
    assert np.array_equal(ep.steps, np.arange(len(eps[0][0])))


def test_shard_is_invisible_until_complete(tmp_path, breakout):
    env, eps = breakout
    info = new_dataset(tmp_path / "ds", env)
    w = ReplayWriter(str(tmp_path / "ds"), info, "w0", row_group_rows=10)
    frames, acts, rews, terms, truncs = eps[0]
    w.begin_episode()
    for i in range(50):
        w.add_step(frames[i], acts[i], rews[i], False, False, score=0.0)
    # rows are on disk (row groups flushed) but only under a temporary name
    files = os.listdir(tmp_path / "ds" / "shards")
    assert len(files) == 1 and files[0].startswith("_tmp-")
    ds = ReplayDataset(str(tmp_path / "ds"))
    assert ds.shards == [] and len(ds.leftovers) == 1
    w.end_episode()
    w.close()
    ds = ReplayDataset(str(tmp_path / "ds"))
    assert len(ds.shards) == 1 and ds.leftovers == []
    (ep,) = list(ds.iter_episodes())
    assert ep.length == 50 and not ep.complete  # closed without an end flag: kept, marked incomplete


def screen(i):
    """A desktop-like 640x360 capture: a gradient, windows, text."""
    import cv2

    img = np.zeros((360, 640, 3), np.uint8)
    img[:] = np.linspace(40, 200, 640, dtype=np.uint8)[None, :, None]
    cv2.rectangle(img, (40 + 10 * i, 60), (300, 250), (200, 80, 40), -1)
    cv2.circle(img, (450, 180 - 5 * i), 60, (30, 180, 90), -1)
    cv2.putText(img, f"frame {i}", (60, 320), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 2)
    return img


def test_factorised_actions_and_jpeg(tmp_path):
    smooth = np.stack([screen(i) for i in range(6)])
    info = DatasetInfo(
        game="Screen",
        env_id="screen",
        observation=ObservationSpec((360, 640, 3), encoding="jpeg", jpeg_quality=90),
        actions=(ActionControl("command", 3), ActionControl("x", 16), ActionControl("y", 9)),
        frame_rate=10,
    )
    create_dataset(str(tmp_path / "ds"), info)
    with ReplayWriter(str(tmp_path / "ds"), info, "pc0") as w:
        w.begin_episode()
        for i, f in enumerate(smooth):
            w.add_step(f, {"command": i % 3, "x": i, "y": 8 - i}, 0.0, False, i == 5)
        w.end_episode()
    ds = ReplayDataset(str(tmp_path / "ds"))
    assert ds.info.action_columns == ["action_command", "action_x", "action_y"]
    (ep,) = list(ds.iter_episodes())
    assert ep.actions.shape == (6, 3) and ep.actions[4].tolist() == [1, 4, 4]
    mse = np.mean((ep.obs.astype(float) - smooth.astype(float)) ** 2)
    assert 10 * np.log10(255**2 / mse) > 30  # JPEG q90: lossy but faithful
    assert ds.shards[0].size < smooth.nbytes / 3


def test_writer_refuses_bad_steps(tmp_path, breakout):
    env, eps = breakout
    info = new_dataset(tmp_path / "ds", env)
    w = ReplayWriter(str(tmp_path / "ds"), info, "w0")
    w.begin_episode()
    with pytest.raises(ReplayFormatError, match="outside control 'action' with 4 values"):
        w.add_step(eps[0][0][0], 7, 0.0, False, False)
    with pytest.raises(ReplayFormatError, match="not declared in dataset.json"):
        w.add_step(eps[0][0][0], 1, 0.0, False, False, lifes=3)
    with pytest.raises(ReplayFormatError, match="does not match the dataset's"):
        w.add_step(eps[0][0][0][:, :, 0], 1, 0.0, False, False)
    w.abort()
    assert ReplayDataset(str(tmp_path / "ds")).shards == []


def test_missing_dataset_and_existing_dataset(tmp_path, breakout):
    with pytest.raises(DatasetNotFoundError, match="no replay dataset at .*nothing-here.*rayapp record"):
        ReplayDataset(str(tmp_path / "nothing-here"))
    env, eps = breakout
    info = new_dataset(tmp_path / "ds", env)
    write(tmp_path / "ds", info, eps[:1])
    other = dataset_info_for(env, EnvConfig(), "raw", 90, ("score",), {})
    with pytest.raises(RayappError, match="already holds a dataset .*record.append=true"):
        create_dataset(str(tmp_path / "ds"), other)
    assert create_dataset(str(tmp_path / "ds"), other, append=True).dataset_id == info.dataset_id
    pong = make_atari_env(EnvConfig(game="Pong"))
    with pytest.raises(
        ReplayFormatError, match="cannot append .*game Breakout vs Pong.*action spaces differ"
    ):
        create_dataset(
            str(tmp_path / "ds"),
            dataset_info_for(pong, EnvConfig(game="Pong"), "raw", 90, ("score",), {}),
            append=True,
        )


def test_truncated_shard_is_named_and_skippable(tmp_path, breakout):
    env, eps = breakout
    info = new_dataset(tmp_path / "ds", env)
    write(tmp_path / "ds", info, eps, shard_mb=0.01, row_group_rows=50)
    ds = ReplayDataset(str(tmp_path / "ds"))
    victim = ds.shards[1]
    victim_rows = ds.read_shard(victim, ["step"]).num_rows
    with open(victim.path, "r+b") as f:
        f.truncate(victim.size // 2)
    ds = ReplayDataset(str(tmp_path / "ds"))
    check = ds.validate_shard(ds.shards[1])
    assert not check.ok and "unreadable Parquet" in check.problem
    with pytest.raises(
        CorruptShardError, match=f"corrupt shard .*{os.path.basename(victim.path)}: unreadable Parquet"
    ):
        list(ds.iter_episodes())
    # with a tolerance the reader skips it and counts it; every other row is still there
    got = list(ds.iter_episodes(max_corrupt_shards=1))
    assert len(ds.skipped) == 1 and ds.skipped[0].uri.endswith(os.path.basename(victim.path))
    assert sum(e.length for e in got) == sum(len(e[0]) for e in eps) - victim_rows


def test_shard_disagreeing_with_dataset_json_is_named(tmp_path, breakout):
    env, eps = breakout
    info = new_dataset(tmp_path / "ds", env)
    write(tmp_path / "ds", info, eps[:1])
    meta = tmp_path / "ds" / "dataset.json"
    d = json.loads(meta.read_text())
    d["observation"]["shape"] = [84, 84, 1]
    meta.write_text(json.dumps(d))
    ds = ReplayDataset(str(tmp_path / "ds"))
    check = ds.validate_shard(ds.shards[0])
    assert not check.ok
    assert (
        "disagrees with dataset.json: observation shape [210, 160, 3] in the shard, [84, 84, 1] in dataset.json"
        in check.problem
    )


def test_rows_breaking_the_contract_are_found(tmp_path, breakout):
    env, eps = breakout
    info = new_dataset(tmp_path / "ds", env)
    frames = eps[0][0][:5]
    schema = row_schema(info, "bad", 0)
    rows = {
        "episode_id": ["e0"] * 5,
        "step": [0, 1, 3, 4, 5],  # step 2 is missing
        "obs": [f.tobytes() for f in frames],
        "action": [0, 1, 2, 3, 0],
        "reward": [0.0] * 5,
        "terminated": [False] * 4 + [True],
        "truncated": [False] * 5,
        "score": [0.0] * 5,
    }
    os.makedirs(tmp_path / "ds" / "shards", exist_ok=True)
    pq.write_table(pa.table(rows, schema=schema), tmp_path / "ds" / "shards" / "bad-00000.parquet")
    ds = ReplayDataset(str(tmp_path / "ds"))
    check = ds.validate_shard(ds.shards[0])
    assert check.problem == "row 2 (episode e0): step 3 does not follow step 1"
    rows["step"] = [0, 1, 2, 3, 4]
    rows["obs"][3] = b"\x00" * 10
    pq.write_table(pa.table(rows, schema=schema), tmp_path / "ds" / "shards" / "bad-00000.parquet")
    check = ReplayDataset(str(tmp_path / "ds")).validate_shard(ds.shards[0])
    assert check.problem == "obs: frame 3 has 10 bytes, expected 100800 for shape (210, 160, 3)"


def test_recorded_extras_are_known():
    from rayapp.replay.schema import EXTRA_TYPES

    assert set(RECORDED_EXTRAS) <= set(EXTRA_TYPES)


def _dataset_uri(where, tmp_path, request):
    if where == "s3":
        return f"s3://{request.getfixturevalue('bucket')}/ds"
    return str(tmp_path / "ds")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_refused_step_leaves_the_writer_usable(where, tmp_path, request, breakout):
    env, eps = breakout
    uri = _dataset_uri(where, tmp_path, request)
    info = new_dataset(uri, env, extras=("score", "lives"))
    frames, acts, rews = eps[0][0], eps[0][1], eps[0][2]
    w = ReplayWriter(uri, info, "w0", row_group_rows=16)
    w.begin_episode()
    for t in range(20):
        w.add_step(frames[t], acts[t], rews[t], False, False, score=0.0, lives=5)
    refused = [
        ((frames[20], 7, 0.0, False, False), {}, "outside control 'action' with 4 values"),
        ((frames[20], "left", 0.0, False, False), {}, "action 'left'"),
        ((frames[20][:, :, 0], 1, 0.0, False, False), {}, "does not match the dataset's"),
        ((frames[20], 1, "lots", False, False), {}, "reward 'lots'"),
        ((frames[20], 1, 0.0, False, False), {"lifes": 3}, "not declared in dataset.json"),
        ((frames[20], 1, 0.0, False, False), {"lives": 10**6}, "lives 1000000"),
        ((frames[20], 1, 0.0, False, False), {"score": "high"}, "score 'high'"),
    ]
    for args, extras, match in refused:
        with pytest.raises(ReplayFormatError, match=match):
            w.add_step(*args, **extras)
    for t in range(20, 40):  # the writer goes on as if the refused steps had never been offered
        w.add_step(frames[t], acts[t], rews[t], False, t == 39, score=0.0, lives=None)
    w.end_episode()
    w.close()
    ds = ReplayDataset(uri)
    assert all(ds.validate_shard(s).ok for s in ds.shards)
    (ep,) = list(ds.iter_episodes())
    assert np.array_equal(ep.steps, np.arange(40))
    assert np.array_equal(ep.obs, frames[:40]) and np.array_equal(ep.actions, acts[:40])
    assert ep.complete


def _visible(uri):
    """Every object under a dataset's shards/ folder, as storage lists it."""
    import pyarrow.fs as pafs

    from rayapp.storage import resolve

    loc = resolve(uri)
    sel = pafs.FileSelector(loc.join("shards").path, allow_not_found=True, recursive=True)
    return sorted(f.base_name for f in loc.fs.get_file_info(sel) if f.type == pafs.FileType.File)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_abort_makes_nothing_visible(where, tmp_path, request, breakout):
    env, eps = breakout
    uri = _dataset_uri(where, tmp_path, request)
    info = new_dataset(uri, env)
    frames, acts, rews, terms, truncs = eps[0]
    w = ReplayWriter(uri, info, "w0", shard_mb=0.001, row_group_rows=10)
    w.begin_episode()  # a first episode: published whole when it ends (shard_mb is tiny)
    for t in range(30):
        w.add_step(frames[t], acts[t], rews[t], False, t == 29, score=0.0)
    w.end_episode()
    assert len(w.shards) == 1
    w.begin_episode()  # a second one, several row groups into its shard
    for t in range(50):
        w.add_step(frames[t], acts[t], rews[t], False, False, score=0.0)
    w.abort()
    assert _visible(uri) == ["w0-00000.parquet"]  # the aborted shard left no trace, not even a temporary
    ds = ReplayDataset(uri)
    assert [s.uri for s in ds.shards] == [w.shards[0].uri] and ds.leftovers == []
    (ep,) = list(ds.iter_episodes())
    assert ep.length == 30 and ep.complete


def test_publish_retries_a_storage_outage_then_succeeds(own_s3, breakout, monkeypatch):
    import threading
    import time

    monkeypatch.setenv("RAYAPP_IO_RETRIES", "4")  # pauses 0.2, 0.4, 0.8, 1.6 s
    env, eps = breakout
    uri = f"s3://{own_s3.bucket}/ds"
    info = new_dataset(uri, env)
    frames, acts, rews, terms, truncs = eps[0]
    w = ReplayWriter(uri, info, "w0", row_group_rows=10)
    w.begin_episode()
    for t in range(40):
        w.add_step(frames[t], acts[t], rews[t], False, t == 39, score=0.0)
    w.end_episode()
    own_s3.stop()  # the endpoint goes away before the shard is published ...
    threading.Timer(1.0, own_s3.start).start()  # ... and comes back while the writer retries
    t0 = time.perf_counter()
    (shard,) = w.close()
    assert time.perf_counter() - t0 < 10
    assert own_s3.keys(own_s3.bucket) == ["ds/dataset.json", "ds/shards/w0-00000.parquet"]
    (ep,) = list(ReplayDataset(uri).iter_episodes())
    assert ep.length == 40 and np.array_equal(ep.obs, frames[:40])


def test_storage_gone_names_the_shard_and_publishes_nothing_partial(own_s3, breakout):
    import time

    from rayapp.errors import StorageError

    env, eps = breakout
    uri = f"s3://{own_s3.bucket}/ds"
    info = new_dataset(uri, env)
    frames, acts, rews, terms, truncs = eps[0]
    w = ReplayWriter(uri, info, "w0", shard_mb=0.001, row_group_rows=10)
    w.begin_episode()
    for t in range(30):
        w.add_step(frames[t], acts[t], rews[t], False, t == 29, score=0.0)
    w.end_episode()  # published
    w.begin_episode()
    for t in range(30):
        w.add_step(frames[t], acts[t], rews[t], False, t == 29, score=0.0)
    own_s3.stop()
    t0 = time.perf_counter()
    with pytest.raises(StorageError) as err:
        w.end_episode()
    took = time.perf_counter() - t0
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{uri}/shards/w0-00001.parquet: cannot reach the S3 endpoint {own_s3.endpoint}")
    assert "gave up after 3 attempts" in msg
    assert 0.2 + 0.4 <= took < 15  # backoff 0.2 s then 0.4 s between the three attempts
    with pytest.raises(StorageError, match="stopped after a storage error"):
        w.begin_episode()  # a writer whose shard was lost says so instead of writing a gap
    assert w.close() == w.shards and len(w.shards) == 1
    own_s3.start()
    assert _visible(uri) == ["w0-00000.parquet"]  # no partial shard, no temporary object
    (ep,) = list(ReplayDataset(uri).iter_episodes())
    assert ep.length == 30 and ep.complete
