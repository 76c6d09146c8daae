"""`rayapp import-video`: real Atari frames as numbered PNG folders and as an MP4 become an
action-less dataset; bad folders are named and never half-imported; readers and inspect accept it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from rayapp.cli import main
from rayapp.replay.reader import ReplayDataset


@pytest.fixture(scope="module")
def atari_frames():
    """Three short Breakout episodes of real emulator frames (random play)."""
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    env = gym.make("ALE/Breakout-v5")
    rng = np.random.default_rng(0)
    eps = []
    for i, n in enumerate((14, 12, 11)):
        obs, _ = env.reset(seed=i)
        frames = [obs]
        for _ in range(n - 1):
            obs, *_ = env.step(int(rng.integers(4)))
            frames.append(obs)
        eps.append(np.stack(frames))
    env.close()
    return eps


def write_pngs(root: Path, eps, names=None) -> Path:
    for k, frames in enumerate(eps):
        d = root / (names[k] if names else f"ep{k}")
        d.mkdir(parents=True)
        for i, f in enumerate(frames):
            cv2.imwrite(str(d / f"{i}.png"), f[..., ::-1])
    return root


def run(*args: str) -> int:
    return main(["import-video", *args])


def test_png_folders_round_trip_in_numeric_order(atari_frames, tmp_path, capsys):
    src = write_pngs(tmp_path / "bulk_videos", atari_frames)
    out = tmp_path / "ds"
    assert run(str(src), "--set", f"data.uri={out}", "--set", "video.fps=15") == 0
    assert "imported 3 episodes, 37 frames of 210x160x3 at 15 fps" in capsys.readouterr().out
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["action_space"] == {"type": "none", "controls": []}
    assert meta["observation"]["shape"] == [210, 160, 3] and meta["frame_rate"] == 15 and meta["game"] == "Breakout"
    ds = ReplayDataset(str(out))
    eps = list(ds.iter_episodes())
    assert [e.episode_id for e in eps] == ["ep0", "ep1", "ep2"]
    for e, frames in zip(eps, atari_frames):
        assert np.array_equal(e.obs, frames)  # lossless, 10.png after 9.png
        assert e.actions.shape == (len(frames), 0) and e.extras["frame"].tolist() == list(range(len(frames)))
        assert e.truncated[-1] and not e.truncated[:-1].any() and not e.terminated.any()
    assert main(["inspect", str(out)]) == 0
    assert "actions   none (unlabelled video" in capsys.readouterr().out


def test_mp4_with_every_and_frame_size(atari_frames, tmp_path):
    import av

    path = tmp_path / "match.mp4"
    frames = np.concatenate(atari_frames)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=30)
        s.width, s.height, s.pix_fmt = 160, 210, "yuv420p"
        s.options = {"crf": "12"} if s.codec.name == "libx264" else {}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    out = tmp_path / "ds"
    assert run(str(path), "--set", f"data.uri={out}", "--set", "video.every=2") == 0
    ds = ReplayDataset(str(out))
    (ep,) = list(ds.iter_episodes())
    assert ep.episode_id == "match" and ep.length == (len(frames) + 1) // 2 and ds.info.frame_rate == 15
    assert np.abs(ep.obs.astype(int) - frames[::2].astype(int)).mean() < 8  # lossy, close
    small = tmp_path / "small"
    assert run(str(path), "--set", f"data.uri={small}", "--set", "video.frame_size=[105,80]", "--set", "video.max_frames=5") == 0
    assert ReplayDataset(str(small)).info.observation.shape == (105, 80, 3)
    assert sum(e.length for e in ReplayDataset(str(small)).iter_episodes(decode=False)) == 5


def test_a_gap_or_a_corrupt_frame_is_named_and_nothing_of_it_is_kept(atari_frames, tmp_path, capsys):
    src = write_pngs(tmp_path / "v", atari_frames)
    os.remove(src / "ep1" / "5.png")
    (src / "ep2" / "3.png").write_bytes(b"not a png")
    out = tmp_path / "ds"
    assert run(str(src), "--set", f"data.uri={out}") != 0
    err = capsys.readouterr().err
    assert "ep1: frame 5.png is missing (the next is 6.png)" in err and "video.max_bad_episodes" in err
    assert not ReplayDataset(str(out)).shards or {e.episode_id for e in ReplayDataset(str(out)).iter_episodes(decode=False)} <= {"ep0"}
    tolerant = tmp_path / "ds2"
    assert run(str(src), "--set", f"data.uri={tolerant}", "--set", "video.max_bad_episodes=2") == 0
    out_line = capsys.readouterr().out
    assert "skipped 2 bad episode(s)" in out_line and "3.png is not a readable PNG" in out_line
    assert [e.episode_id for e in ReplayDataset(str(tolerant)).iter_episodes(decode=False)] == ["ep0"]


def test_mixed_sizes_refused_unless_resized_and_no_overwrite(atari_frames, tmp_path, capsys):
    small = [cv2.resize(f, (80, 105)) for f in atari_frames[1]]
    src = write_pngs(tmp_path / "v", [atari_frames[0], np.stack(small)])
    assert run(str(src), "--set", f"data.uri={tmp_path / 'a'}") != 0
    assert "set video.frame_size=[H,W]" in capsys.readouterr().err
    assert run(str(src), "--set", f"data.uri={tmp_path / 'b'}", "--set", "video.frame_size=[105,80]") == 0
    assert run(str(src), "--set", f"data.uri={tmp_path / 'b'}", "--set", "video.frame_size=[105,80]") != 0
    err = capsys.readouterr().err
    assert "already holds a dataset" in err and "set video.append=true" in err and "record.append" not in err, err
    assert run(str(tmp_path / "nothing-here"), "--set", f"data.uri={tmp_path / 'c'}") != 0


def test_action_less_writer_refuses_actions_and_bc_refuses_the_dataset(atari_frames, tmp_path):
    from rayapp.data.index import DatasetIndex
    from rayapp.errors import ReplayFormatError
    from rayapp.replay.writer import ReplayWriter

    src = write_pngs(tmp_path / "v", atari_frames[:1])
    out = tmp_path / "ds"
    assert run(str(src), "--set", f"data.uri={out}") == 0
    ds = ReplayDataset(str(out))
    w = ReplayWriter(str(tmp_path / "other"), ds.info, "w")
    w.begin_episode()
    with pytest.raises(ReplayFormatError, match="without actions"):
        w.add_step(atari_frames[0][0], 1, 0.0, False, False)
    w.abort()
    with pytest.raises(ReplayFormatError, match=r"has no actions \(unlabelled video.*data.label=latent_action"):
        DatasetIndex.build(ds, "action")
