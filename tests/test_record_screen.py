"""Recording a person at the screen (`rayapp record --source screen`) against a real X server
(Xvfb): `rayapp arcade` plays Breakout in its window, the recorder captures that window by title
and reads the held keys, while this test presses keys through XTEST as a person would; the
recorded actions follow the keys, the dataset passes the project's validation, a recorder killed
mid-episode keeps its published shards, and bad input fails in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import held_keys as keys_held_now

from rayapp.replay.inspect import inspect_dataset
from rayapp.replay.reader import ReplayDataset

pytest.importorskip("Xlib")
pytest.importorskip("mss")
pytest.importorskip("pygame")

ROOT = Path(__file__).resolve().parent.parent
CONFIG = str(ROOT / "configs" / "arcade-screen.yaml")
TITLE = "rayapp arcade: Breakout"


def _env(display: str | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), SDL_AUDIODRIVER="dummy", RAY_USAGE_STATS_ENABLED="0")
    env.pop("DISPLAY", None)
    if display:
        env["DISPLAY"] = display
    return env


@pytest.fixture
def arcade(display):
    from rayapp.envs.screen import WindowFinder
    from rayapp.errors import CaptureError

    proc = subprocess.Popen([sys.executable, "-m", "rayapp.cli", "arcade", "--game", "Breakout"], env=_env(display),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    finder = WindowFinder()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                window = finder.find(TITLE)
                break
            except CaptureError:
                assert proc.poll() is None and time.monotonic() < deadline, "the arcade window did not appear"
                time.sleep(0.1)
        finder.focus(window)  # the game reads the keys the test presses (the recorder reads them anyway)
        yield proc
    finally:
        finder.close()
        proc.terminate()
        proc.wait(timeout=30)


class Recorder:
    """`rayapp record --source screen` in its own process; `started` is set at its first progress line."""

    def __init__(self, display: str | None, tmp: Path, *overrides: str):
        self.uri = str(tmp / "data")
        args = [sys.executable, "-m", "rayapp.cli", "record", "--source", "screen", "--config", CONFIG,
                "--set", f"data.uri={self.uri}", "--set", f"run.dir={tmp / 'run'}"]  # fmt: skip
        for o in overrides:
            args += ["--set", o]
        self.proc = subprocess.Popen(
            args, env=_env(display), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.started = threading.Event()
        self.err: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.err.append(line)
            if line.startswith("record:"):
                self.started.set()

    def wait(self, timeout: float = 120) -> tuple[int, str, str]:
        out = self.proc.stdout.read()
        rc = self.proc.wait(timeout=timeout)
        self._t.join(timeout=10)
        return rc, out, "".join(self.err)


def test_recorded_actions_follow_the_keys_held(display, arcade, tmp_path):
    """XTEST holds key combinations for 4-8 frames each while the recorder samples at 30 fps: every
    row's action is the combination held at its time (the most keys win: left + space is FIRE, the
    first of two one-key actions), lagging by at most one frame."""
    from rayapp.envs.inputs import KeyboardBackend

    fps, steps = 30, 300
    rec = Recorder(display, tmp_path, f"env.fps={fps}", f"record.steps={steps}")
    assert rec.started.wait(60), "".join(rec.err)
    combos = {
        "NOOP": [],
        "FIRE": ["space"],
        "RIGHT": ["right"],
        "LEFT": ["left"],
        "LEFT+SPACE": ["left", "space"],
    }
    expected_action = {"NOOP": 0, "FIRE": 1, "RIGHT": 2, "LEFT": 3, "LEFT+SPACE": 1}
    kb = KeyboardBackend(combos)
    rng = np.random.default_rng(0)
    log = []  # (time before the press, time after it, action)
    try:
        order = ["RIGHT", "LEFT", "NOOP", "FIRE", "LEFT+SPACE"] * 8
        for name in order:
            if rec.proc.poll() is not None:
                break
            t0 = time.time()
            kb.apply(name)
            log.append((t0, time.time(), expected_action[name]))
            time.sleep(rng.integers(4, 9) / fps)
    finally:
        t0 = time.time()
        kb.close()  # releases everything: NOOP from here on
        log.append((t0, time.time(), 0))
    rc, out, err = rec.wait()
    assert rc == 0, err
    assert "stopped by record.steps" in out

    report = inspect_dataset(rec.uri)
    assert report.ok and report.steps == steps
    ds = ReplayDataset(rec.uri)
    assert ds.info.recorded_by["policy"] == "human" and [c.labels for c in ds.info.actions] == [
        ("NOOP", "FIRE", "RIGHT", "LEFT")
    ]
    (ep,) = list(ds.iter_episodes(decode=True))
    assert ep.obs.shape == (steps, 210, 160, 3) and ep.truncated[-1]
    times, actions = ep.extras["time"], ep.actions

    # every row against the combination held at its time; rows within one frame after a press may show the one before
    lags_frames, lags_ms, over = [], [], []
    for i, (t_before, t_after, a) in enumerate(log):
        t_end = log[i + 1][0] if i + 1 < len(log) else np.inf
        rows = np.nonzero((times > t_after) & (times < t_end))[0]
        if not len(rows):
            continue
        hit = np.nonzero(actions[rows] == a)[0]
        assert len(hit), f"the action {a} held from {t_after:.3f} was never recorded ({actions[rows]})"
        lags_frames.append(int(hit[0]))
        first = rows[hit[0]]
        lags_ms.append((times[first] - t_before) * 1000)
        # one frame period (two when the press landed just after a read), more only by frames the recorder dropped
        if lags_ms[-1] > 1000 / fps * (2 + ep.extras["dropped"][max(first - 1, 0) : first + 1].sum()):
            over.append((first, lags_ms[-1]))
        bad = rows[hit[0] :][actions[rows[hit[0] :]] != a]
        assert not len(bad), f"rows {bad} (times {times[bad] - t_after}) show {actions[bad]}, not {a}"
    dropped = int(ep.extras["dropped"].sum())
    print(f"\nhuman recording at {fps} fps: {len(lags_frames)} key changes over {steps} steps; lag in frames "
          f"max {max(lags_frames)} mean {np.mean(lags_frames):.2f}; press -> first row with it: p50 "
          f"{np.median(lags_ms):.1f} ms, max {max(lags_ms):.1f} ms (one frame {1000 / fps:.1f} ms); "
          f"{dropped} dropped frames")  # fmt: skip
    assert len(lags_frames) >= 20
    assert max(lags_frames) <= 1
    assert not over, over


def test_a_recorder_killed_mid_episode_keeps_its_published_shards(display, arcade, tmp_path):
    """SIGKILL (no cleanup at all) after a few shards: what was published stays valid and complete,
    and only the shard in progress (at most 30 steps here) is lost."""
    rec = Recorder(display, tmp_path, "env.fps=30", "env.max_episode_steps=30", "record.shard_steps=30",
                   "record.row_group_rows=10", "record.episodes=1000")  # fmt: skip
    shards = Path(rec.uri) / "shards"
    deadline = time.monotonic() + 90
    while len([p for p in shards.glob("*.parquet") if not p.name.startswith("_")]) < 3:  # published ones
        assert rec.proc.poll() is None and time.monotonic() < deadline, "".join(rec.err)
        time.sleep(0.1)
    time.sleep(0.5)  # mid-episode: half of the next episode
    killed_at = time.time()
    rec.proc.send_signal(signal.SIGKILL)
    rc, _, _ = rec.wait()
    assert rc == -signal.SIGKILL

    report = inspect_dataset(rec.uri)
    assert report.ok and not report.corrupt
    ds = ReplayDataset(rec.uri)
    episodes = list(ds.iter_episodes(decode=False))
    assert len(episodes) >= 3 and all(e.complete and e.length == 30 for e in episodes)
    last = max(float(e.extras["time"][-1]) for e in episodes)
    lost_s = killed_at - last
    print(f"\nkilled recorder: {len(ds.shards)} shards, {sum(e.length for e in episodes)} steps kept; "
          f"the last kept row was {lost_s:.2f} s before the kill")  # fmt: skip
    assert lost_s < 30 / 30 + 0.5  # at most the shard in progress (30 steps at 30 fps), plus scheduling slack


@pytest.mark.parametrize(
    "case, overrides, env_display, words",
    [
        ("unknown key", ["inputs.keys={NOOP: [], FIRE: [spacebar]}"], True, "unknown key name 'spacebar'"),
        ("no display", [], False, "DISPLAY is not set"),
        ("no such window", ["env.window_title=no window is called this"], True, "no window titled"),
    ],
)
def test_bad_input_fails_in_one_line(display, tmp_path, case, overrides, env_display, words):
    rec = Recorder(display if env_display else None, tmp_path, "record.steps=10", *overrides)
    rc, out, err = rec.wait()
    lines = [x for x in err.splitlines() if x.strip()]
    assert rc != 0 and len(lines) == 1 and lines[0].startswith("rayapp record: error:"), (case, err)
    assert words in lines[0], lines[0]
    assert not (tmp_path / "data" / "dataset.json").exists()  # nothing touched


def test_the_x_server_readers_see_xtest_keys_and_the_pointer(display):
    from rayapp.envs.inputs import KEYS
    from rayapp.envs.inputs.listen import X11KeyState, X11Pointer
    from rayapp.envs.inputs.x11 import XTestSink

    sink, keys, pointer = XTestSink(), X11KeyState([KEYS["left"], KEYS["space"]]), X11Pointer()
    try:
        assert keys.held() == set()
        sink.key(KEYS["left"], True)
        sink.key(KEYS["a"], True)  # a key no mapping uses: not read
        sink.move(300, 200)
        sink.button("left", True)
        sink.flush()
        assert keys.held() == {"left"} and pointer.read() == (300, 200, {"left"})
    finally:
        for k in ("left", "a"):
            sink.key(KEYS[k], False)
        sink.button("left", False)
        sink.flush()
        sink.close()
        keys.close()
        pointer.close()
    assert keys_held_now(display) == []


def test_recording_the_mouse_stores_command_and_cell(display, tmp_path):
    """The pointer held in one cell with the left button down: every row is (left_hold, that cell)
    after the first (a click: the button was just pressed)."""
    from rayapp.config import load_config
    from rayapp.envs.inputs.x11 import XTestSink
    from rayapp.record_screen import record_screen

    cfg = load_config(None, [
        "record.source=screen", "env.capture=monitor", "env.frame_size=[72, 128]", "env.fps=30", "record.steps=20",
        "inputs.backend=mouse", "inputs.mouse_commands=[none, move, left_click, left_hold]", "inputs.mouse_grid=[16, 9]",
        f"data.uri={tmp_path / 'data'}", f"run.dir={tmp_path / 'run'}",
    ])  # fmt: skip
    sink = XTestSink()
    try:
        sink.move(1000, 100)  # 1280x720: cell (12, 1)
        sink.flush()
        time.sleep(0.05)
        sink.button("left", True)
        sink.flush()
        summary = record_screen(cfg, show_progress=False)
    finally:
        sink.button("left", False)
        sink.flush()
        sink.close()
    assert summary.steps == 20 and inspect_dataset(str(tmp_path / "data")).ok
    ds = ReplayDataset(str(tmp_path / "data"))
    assert [(c.name, c.n) for c in ds.info.actions] == [("command", 4), ("x", 16), ("y", 9)]
    (ep,) = list(ds.iter_episodes(decode=False))
    assert (
        ep.actions.shape == (20, 3)
        and ep.actions[0].tolist() == [2, 12, 1]
        and (ep.actions[1:] == [3, 12, 1]).all()
    )


def test_a_key_tapped_between_two_samples_counts_once(display):
    """The RECORD extension latches presses: a tap released before the next read is still read, once."""
    from rayapp.envs.inputs import KEYS
    from rayapp.envs.inputs.listen import X11KeyState
    from rayapp.envs.inputs.x11 import XTestSink

    sink, keys = XTestSink(), X11KeyState([KEYS["left"], KEYS["space"]])
    try:
        assert keys.latch is not None, "Xvfb has RECORD"
        assert keys.held() == set()
        sink.key(KEYS["space"], True)
        sink.flush()
        sink.key(KEYS["space"], False)
        sink.flush()
        deadline = time.monotonic() + 2
        while keys.latch.events == 0 and time.monotonic() < deadline:  # the listener thread's event
            time.sleep(0.005)
        assert keys.held() == {"space"}  # released already, still read
        assert keys.held() == set()  # and only once
        no_taps = X11KeyState([KEYS["space"]], taps=False)
        sink.key(KEYS["space"], True)
        sink.key(KEYS["space"], False)
        sink.flush()
        assert no_taps.held() == set()  # the state alone misses it
        no_taps.close()
    finally:
        sink.close()
        keys.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stop_cleanly_keeping_every_row(display, arcade, tmp_path, sig):
    rec = Recorder(display, tmp_path, "env.fps=30", "record.episodes=1000")
    assert rec.started.wait(60), "".join(rec.err)
    time.sleep(1.0)
    rec.proc.send_signal(sig)
    rc, out, err = rec.wait()
    assert rc == 0, err
    assert f"stopped by {signal.Signals(sig).name}" in out
    (ep,) = list(ReplayDataset(rec.uri).iter_episodes(decode=False))
    assert ep.length >= 25 and ep.truncated[-1] and not ep.truncated[:-1].any()
    assert f"recorded 1 episodes, {ep.length:,} steps" in out


def test_a_game_mods_state_and_episode_ends_go_into_the_replay(display, tmp_path):
    """env.reward=game_api: the mod's rewards and `done` end the rows' episodes, and its other keys
    (speed, position) are stored in each row's `reward_info`, the state after that row's action;
    env.time_limit_s truncates an episode the mod never ends."""
    import json

    from rayapp.config import load_config
    from rayapp.envs.screen.fake_game_api import FakeGameApi, default_script
    from rayapp.record_screen import record_screen

    def cfg(*extra: str):
        return load_config(None, [
            "record.source=screen", "env.capture=monitor", "env.frame_size=[72, 128]", "env.fps=30",
            "inputs.backend=keyboard", "inputs.keys={NOOP: [], FIRE: [space]}",
            f"data.uri={tmp_path / 'data'}", f"run.dir={tmp_path / 'run'}", *extra,
        ])  # fmt: skip

    mod = FakeGameApi(default_script(reward_every=3, episode_steps=12))
    try:
        summary = record_screen(cfg("env.reward=game_api", f"env.game_api_address={mod.address}",
                                    "record.episodes=2"), show_progress=False)  # fmt: skip
    finally:
        mod.close()
    assert summary.steps == 24 and inspect_dataset(str(tmp_path / "data")).ok
    eps = list(ReplayDataset(str(tmp_path / "data")).iter_episodes(decode=False))
    assert len(eps) == 2
    for ep in eps:
        assert len(ep.actions) == 12 and ep.terminated[-1] and not ep.terminated[:-1].any()
        assert ep.rewards.tolist() == [1.0 if n % 3 == 0 else 0.0 for n in range(1, 13)]
        states = [json.loads(x) for x in ep.extras["reward_info"]]
        assert states == [{"speed": 0.5 * n, "position": [float(n), 2.0 * n, 0.0]} for n in range(1, 13)]

    # no reward source ends it: the time limit does, well before env.max_episode_steps
    summary = record_screen(cfg("data.uri=" + str(tmp_path / "limited"), "env.time_limit_s=0.5",
                                "record.episodes=1"), show_progress=False)  # fmt: skip
    (ep,) = list(ReplayDataset(str(tmp_path / "limited")).iter_episodes(decode=False))
    assert ep.truncated[-1] and not ep.terminated.any() and 2 <= len(ep.actions) <= 17, len(ep.actions)
