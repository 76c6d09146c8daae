"""The ingest pipeline: preprocessing, frame stacks at episode/shard/task boundaries, clips,
splits by episode, balancing, corrupt shards; directly and through Ray Data."""

import os

import cv2
import numpy as np
import pytest
from conftest import SMOKE

from rayapp.config import EnvConfig, load_config
from rayapp.data import balance_factors, build_ingest
from rayapp.data.index import split_of
from rayapp.data.samples import clip_positions, read_samples, stack_indices
from rayapp.envs.atari import dataset_info_for, make_atari_env
from rayapp.errors import CorruptShardError
from rayapp.frames import FrameSpec, Preprocessor
from rayapp.replay import ReplayDataset, ReplayWriter, create_dataset


def test_preprocess_equals_per_frame_opencv():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (9, 210, 160, 3), dtype=np.uint8)
    gray = Preprocessor(FrameSpec(), x.shape[1:])(x)
    ref = np.stack(
        [cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), (84, 84), interpolation=cv2.INTER_AREA) for f in x]
    )
    assert gray.shape == (9, 1, 84, 84) and np.array_equal(gray[:, 0], ref)
    spec = FrameSpec(grayscale=False, crop=(20, 10, 8, 8), resize=(96, 72))
    color = Preprocessor(spec, x.shape[1:])(x)
    ref = np.stack(
        [cv2.resize(f[20:200, 8:152], (72, 96), interpolation=cv2.INTER_AREA) for f in x]
    ).transpose(0, 3, 1, 2)
    assert color.shape == (9, 3, 96, 72) and np.array_equal(color, ref)
    assert spec.input_shape(x.shape[1:]) == (12, 96, 72)
    with pytest.raises(ValueError, match="leaves nothing"):
        FrameSpec(crop=(200, 20, 0, 0)).frame_shape((210, 160, 3))


def test_stack_and_clip_index_rules():
    # rows: episode A steps 0..4, episode B steps 0..2
    seg_start = np.array([0, 0, 0, 0, 0, 5, 5, 5])
    idx = stack_indices(seg_start, np.array([0, 2, 4, 5, 7]), 3)
    assert idx.tolist() == [[0, 0, 0], [0, 1, 2], [2, 3, 4], [5, 5, 5], [5, 6, 7]]
    seg_id = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    clip_start = np.array([1, 0, 0, 1, 0, 1, 0, 0], bool)  # L=3 inside A (steps 0, 3), B starts
    pos, mask = clip_positions(np.array([0, 3, 5]), seg_id, clip_start, 3)
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0], [1, 1, 1]]
    assert pos[0].tolist() == [0, 1, 2] and pos[1][:2].tolist() == [3, 4] and pos[2].tolist() == [5, 6, 7]


def test_split_is_by_episode_stable_and_nonempty():
    from rayapp.data.index import _unit

    eps = [f"w-e{i:03d}" for i in range(40)]
    a = split_of({e: _unit(0, e) for e in eps}, 0.1, 0.1)
    more = eps + [f"x-e{i:03d}" for i in range(20)]
    b = split_of({e: _unit(0, e) for e in more}, 0.1, 0.1)
    assert all(b[e] == a[e] for e in eps), "adding episodes moves none of the old ones"
    assert set(a.values()) == {"train", "val", "test"}
    tiny = split_of({e: _unit(0, e) for e in eps[:3]}, 0.1, 0.1)
    assert sorted(tiny.values()) == ["test", "train", "val"]


def test_one_or_two_episodes_always_train_on_one():
    """Hashes that put every episode outside training (as a 2-episode Pong recording in
    tests/test_bc.py drew once: "no training steps (splits: train 0, val 400)") leave the highest in it."""
    assert split_of({"a": 0.15, "b": 0.18}, 0.1, 0.1) == {"a": "val", "b": "train"}
    assert split_of({"a": 0.05, "b": 0.15}, 0.1, 0.1) == {"a": "test", "b": "train"}
    assert split_of({"only": 0.02}, 0.1, 0.1) == {"only": "train"}
    assert split_of({"a": 0.5, "b": 0.15}, 0.1, 0.1) == {"a": "train", "b": "val"}, "a split with training stays"


def test_balance_factors():
    counts = np.array([700, 10, 140, 150])
    p = counts / counts.sum()
    full = balance_factors(counts, 1.0, 1000)
    assert np.allclose(p * full / (p * full).sum(), 0.25)  # uniform classes
    assert np.isclose((p * full).sum(), 1.0)  # an epoch keeps its length
    half = balance_factors(counts, 0.5, 1000)
    share = p * half / (p * half).sum()
    assert np.allclose(share, np.sqrt(p) / np.sqrt(p).sum())
    assert np.allclose(balance_factors(counts, 0.0, 1000), 1.0)
    capped = balance_factors(counts, 1.0, 5.0)
    assert capped.max() <= 5.0 + 1e-9 and np.isclose((p * capped).sum(), 1.0)
    assert balance_factors(np.array([5, 0, 5]), 1.0, 10)[1] == 0.0


@pytest.fixture(scope="module")
def spanning(tmp_path_factory):
    """Real Breakout episodes written with tiny row groups and shards that roll mid-episode, so
    episodes cross row groups, read tasks and shards; 2 writers."""
    root = tmp_path_factory.mktemp("spanning") / "replays"
    env = make_atari_env(EnvConfig(max_episode_steps=90))
    info = create_dataset(str(root), dataset_info_for(env, EnvConfig(), "raw", 90, ("score",), {}))
    rng = np.random.default_rng(0)
    truth = {}
    for w in range(2):
        with ReplayWriter(
            str(root), info, f"w{w}", shard_mb=0.004, max_shard_mb=0.004, row_group_rows=13
        ) as wr:
            for e in range(3):
                obs, _ = env.reset(seed=10 * w + e)
                ep = wr.begin_episode()
                frames, acts = [], []
                while True:
                    a = int(rng.choice(4, p=[0.55, 0.05, 0.2, 0.2]))
                    nxt, r, te, tr, _ = env.step(a)
                    wr.add_step(obs, a, r, te, tr, score=0.0)
                    frames.append(obs)
                    acts.append(a)
                    obs = nxt
                    if te or tr:
                        break
                wr.end_episode()
                truth[ep] = (np.stack(frames), np.array(acts))
    return str(root), truth


def _cfg(uri, *extra):
    return load_config(SMOKE, [f"data.uri={uri}", "data.rows_per_task=40", *extra])


def _all_samples(ingest, split=None, train=False, epoch=0):
    spec = ingest.read_spec(split, train, include_ids=True)
    out = []
    for task in ingest.tasks(split):
        out += list(read_samples(spec, task, epoch))
    return {k: np.concatenate([b[k] for b in out]) for k in out[0]}


def test_frame_stacks_are_exact_across_row_groups_tasks_and_shards(spanning):
    uri, truth = spanning
    ds = ReplayDataset(uri)
    assert len(ds.shards) > 6, "episodes span several shards"
    ingest = build_ingest(_cfg(uri, "data.val_fraction=0", "data.test_fraction=0"))
    assert len(ingest.tasks(None)) > 4
    s = _all_samples(ingest)
    total = sum(len(a) for _, a in truth.values())
    assert len(s["step"]) == total, "every step exactly once"
    pre = Preprocessor(ingest.frames, ds.info.observation.shape)
    processed = {e: pre(f)[:, 0] for e, (f, _) in truth.items()}
    for i in range(total):
        e, t = s["episode_id"][i], s["step"][i]
        want = [max(0, t - 3 + j) for j in range(4)]  # padded with the episode's first frame
        assert s["stack_steps"][i].tolist() == want
        assert np.array_equal(s["obs"][i], processed[e][want]), f"{e} step {t}"
        assert s["action"][i] == truth[e][1][t]


def test_clips_never_cross_episodes(spanning):
    uri, truth = spanning
    ingest = build_ingest(
        _cfg(
            uri,
            "data.val_fraction=0",
            "data.test_fraction=0",
            "data.clip_length=20",
            "data.frame_stack=1",
            "model.arch=cnn_lstm",
        )
    )
    s = _all_samples(ingest)
    n_clips = sum(-(-len(a) // 20) for _, a in truth.values())
    assert len(s["episode_id"]) == n_clips
    assert s["obs"].shape[1:] == (20, 1, 84, 84)
    pre = Preprocessor(ingest.frames, (210, 160, 3))
    for i in range(n_clips):
        e, steps, mask = s["episode_id"][i], s["step"][i], s["mask"][i]
        valid = steps[mask]
        assert valid[0] % 20 == 0 and np.array_equal(valid, np.arange(valid[0], valid[0] + len(valid)))
        assert len(valid) == min(20, len(truth[e][1]) - valid[0])
        assert np.array_equal(s["action"][i][mask], truth[e][1][valid])
        assert np.array_equal(s["obs"][i][mask][:, 0], pre(truth[e][0][valid])[:, 0])


def test_splits_are_disjoint_and_cover_everything(spanning):
    uri, truth = spanning
    ingest = build_ingest(_cfg(uri, "data.val_fraction=0.2", "data.test_fraction=0.2"))
    seen = {
        sp: set(_all_samples(ingest, sp)["episode_id"]) for sp in ("train", "val", "test") if ingest.rows(sp)
    }
    assert set(seen) == {"train", "val", "test"}
    assert (
        not (seen["train"] & seen["val"])
        and not (seen["train"] & seen["test"])
        and not (seen["val"] & seen["test"])
    )
    assert set.union(*seen.values()) == set(truth)
    again = build_ingest(_cfg(uri, "data.val_fraction=0.2", "data.test_fraction=0.2"))
    assert again.index.episode_split == ingest.index.episode_split


def test_resampling_balances_the_sampled_classes(spanning):
    uri, _ = spanning
    base = build_ingest(_cfg(uri, "data.val_fraction=0", "data.test_fraction=0"))
    p = base.index.label_counts["train"][0] / base.rows("train")
    assert p[0] > 0.4  # NOOP-heavy, as recorded
    bal = build_ingest(
        _cfg(
            uri,
            "data.val_fraction=0",
            "data.test_fraction=0",
            "data.balance=resample",
            "data.max_resample_rate=100",
        )
    )
    counts = np.zeros(4)
    for epoch in range(5):
        counts += np.bincount(_all_samples(bal, "train", train=True, epoch=epoch)["action"], minlength=4)
    share = counts / counts.sum()
    assert np.all(np.abs(share - 0.25) < 0.06), share  # uniform within sampling noise
    w = build_ingest(_cfg(uri, "data.balance=weights")).class_weights[0]
    assert w.argmax() == p.argmin() and w.argmin() == p.argmax()


def test_corrupt_shard_fails_or_is_skipped_and_counted(spanning, tmp_path):
    import shutil

    uri, _ = spanning
    copy = tmp_path / "replays"
    shutil.copytree(uri, copy)
    victim = sorted(os.listdir(copy / "shards"))[2]
    with open(copy / "shards" / victim, "r+b") as f:
        f.truncate(100)
    with pytest.raises(CorruptShardError, match=victim):
        build_ingest(_cfg(str(copy)))
    ingest = build_ingest(_cfg(str(copy), "data.max_corrupt_shards=1"))
    assert [c["uri"].endswith(victim) for c in ingest.summary()["corrupt_shards_skipped"]] == [True]
    s = _all_samples(ingest)
    assert len(s["step"]) == ingest.index.rows()


def test_ray_data_delivers_the_same_samples(spanning, ray_session):
    uri, truth = spanning
    ingest = build_ingest(_cfg(uri, "data.val_fraction=0", "data.test_fraction=0"))
    rows = ingest.dataset(None, include_ids=True).take_all()
    assert len(rows) == sum(len(a) for _, a in truth.values())
    direct = _all_samples(ingest)
    key = lambda e, t: (str(e), int(t))  # noqa: E731
    want = {key(e, t): o for e, t, o in zip(direct["episode_id"], direct["step"], direct["obs"])}
    for r in rows[::7]:
        assert np.array_equal(r["obs"], want[key(r["episode_id"], r["step"])])
    batches = list(ingest.dataset("train").iter_torch_batches(batch_size=32))
    assert batches[0]["obs"].dtype.is_floating_point is False and tuple(batches[0]["obs"].shape[1:]) == (
        4,
        84,
        84,
    )
