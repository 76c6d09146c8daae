"""`rayapp finetune` after a SIGKILL: checkpoints and exported policies are whole or absent, and a
rerun resumes from the newest complete checkpoint with its replay buffer, without repeating the
offline phase; the curve, metrics and progress bar continue. Real Ray, real Breakout."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, SMOKE

from rayapp.errors import RayappError

# a tiny online phase with a checkpoint every iteration, and curve points without greedy episodes
ARGS = ["finetune.init_checkpoint=none", "finetune.num_env_runners=0", "finetune.offline_updates=5",
        "finetune.envs_per_env_runner=2", "finetune.rollout_fragment_length=16", "finetune.steps_per_iteration=32",
        "finetune.online_steps=192", "finetune.learning_starts=32", "finetune.checkpoint_every_steps=32",
        "finetune.eval_episodes=0", "finetune.eval_every_steps=64"]  # fmt: skip


def record_demos(run) -> None:
    """Two short teacher episodes into `<run>/replays`, written in this process (no Ray)."""
    from rayapp.config import config_to_dict, load_config
    from rayapp.record import Collector, _describe
    from rayapp.replay.dataset import create_dataset

    cfg = load_config(SMOKE, [f"run.dir={run}", "env.max_episode_steps=150"])
    info = create_dataset(cfg.data_uri, _describe(cfg))
    c = Collector(config_to_dict(cfg), info.to_json(), cfg.data_uri, "t-c00", 7)
    for _ in range(2):
        c.record_episode()
    c.close()


def _complete(rllib) -> list[tuple[int, dict]]:
    if not os.path.isdir(rllib):
        return []
    out = []
    for name in os.listdir(rllib):
        marker = os.path.join(rllib, name, "complete.json")
        if name.isdigit() and os.path.exists(marker):
            out.append((int(name), json.loads(open(marker).read())))
    return sorted(out, key=lambda c: c[0])


def _writing(rllib) -> bool:
    return os.path.isdir(rllib) and any(n.startswith("_tmp-") for n in os.listdir(rllib))


@pytest.mark.own_ray
def test_sigkilled_finetune_resumes_from_its_newest_complete_checkpoint(tmp_path):
    run = tmp_path / "run"
    record_demos(run)
    rllib = str(run / "finetune" / "rllib")
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)  # its own local Ray, not the test session's
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    sets = [
        a for kv in [f"run.dir={run}", "ray.num_cpus=2", "ray.dashboard=false", *ARGS] for a in ("--set", kv)
    ]
    cmd = [sys.executable, "-m", "rayapp.cli", "finetune", "--config", SMOKE, *sets]

    def launch(i: int):
        out, err = open(tmp_path / f"out{i}.txt", "w"), open(tmp_path / f"err{i}.txt", "w")
        return subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=tmp_path, start_new_session=True)

    def logs(i: int) -> tuple[str, str]:
        return (tmp_path / f"out{i}.txt").read_text(), (tmp_path / f"err{i}.txt").read_text()

    def wait_for(p, i, cond, what):
        deadline = time.time() + 600
        while not cond():
            assert p.poll() is None, (
                f"finetune exited (rc {p.returncode}) before {what}:\n" + "\n".join(logs(i))[-3000:]
            )
            assert time.time() < deadline, f"timed out waiting for {what}"
            time.sleep(0.01)

    def killpg(p):
        os.killpg(p.pid, signal.SIGKILL)  # the driver and the Ray it started, as a user's Ctrl-\ or OOM kill
        p.wait()

    # kill moments: during a checkpoint write (a `_tmp-` folder exists), between checkpoints, during one again
    mid_write_kills, resumed_at, curve_before, leftover = 0, None, None, []

    def check_rerun(i: int) -> None:
        """What a rerun said and did: where it resumed, with the buffer, and no offline phase."""
        out, err = logs(i)
        steps, marker = resumed_at
        assert f"resumed from {rllib}/{steps:09d} at env step {steps:,} (online buffer: " \
               f"{marker['online_buffer_steps']:,} steps" in out, out  # fmt: skip
        assert marker["online_buffer_steps"] >= steps > 0  # the online data came back, not refilled
        for name in leftover:
            assert f"{rllib}/{name} is an incomplete checkpoint" in out, out
        assert "finetune offline" not in err
        first = re.search(r"finetune online: (\d+)/192 steps", err)  # the bar continues from there
        assert first and steps < int(first.group(1)) <= steps + 64, err[-2000:]

    for i, moment in enumerate(["write", "between", "write"]):
        p = launch(i)
        newest = max([s for s, _ in _complete(rllib)], default=0)

        def new_checkpoint(newest=newest):
            return any(s > newest for s, _ in _complete(rllib))

        if moment == "write":
            wait_for(p, i, lambda: new_checkpoint() and _writing(rllib), "a checkpoint write")
        else:
            wait_for(p, i, new_checkpoint, "a new checkpoint")
            time.sleep(0.5)
        killpg(p)
        if i:
            check_rerun(i)
        else:
            assert "finetune offline: 5/5 updates" in logs(i)[1], logs(i)[1][-2000:]
        leftover = [n for n in os.listdir(rllib) if n.startswith("_tmp-")]
        mid_write_kills += bool(leftover)
        resumed_at = _complete(rllib)[-1]
        assert len(_complete(rllib)) <= 2  # the newest two are kept
        if (run / "finetune" / "curve.json").exists():  # the curve as the killed runs left it
            curve_before = json.loads((run / "finetune" / "curve.json").read_text())
    assert mid_write_kills >= 1, "no kill landed during a checkpoint write"

    # the last rerun runs to the end
    i += 1
    p = launch(i)
    assert p.wait(timeout=900) == 0, "\n".join(logs(i))[-4000:]
    check_rerun(i)
    assert not any(n.startswith("_tmp-") for n in os.listdir(rllib))
    result = json.loads((run / "finetune" / "result.json").read_text())
    assert result["env_steps"] >= 192
    # the curve kept the earlier runs' points and continued: one point per eval step, in order
    curve = json.loads((run / "finetune" / "curve.json").read_text())
    steps = [p["env_steps"] for p in curve]
    assert steps == sorted(set(steps)) and curve[-1]["phase"] == "final", steps
    assert curve_before, "no curve point before the last kill"
    kept = [p for p in curve_before if p["env_steps"] <= curve[-1]["env_steps"] and p["phase"] == "online"]
    assert kept and [(p["env_steps"], p["policy"]) for p in kept] == [
        (p["env_steps"], p["policy"]) for p in curve[: len(kept)]
    ]
    assert {"online"} == {p["phase"] for p in curve[:-1]} and len(curve) >= 3
    # the metrics: the offline rows once, online rows each step once (the killed runs' rows after
    # their checkpoint are measured again, not doubled)
    rows = list(csv.DictReader(open(run / "finetune" / "metrics.csv")))
    assert sum(r["phase"] == "offline" for r in rows) == 1
    online = [
        int(r["step"]) for r in rows if r["phase"] == "online" and r.get("perf/env_steps_per_s")
    ]  # not eval rows
    assert online == sorted(set(online)) and online[-1] >= 192, online


# ---- in-process, on the session Ray --------------------------------------------------------------
def _cfg(run):
    from rayapp.config import load_config

    return load_config(SMOKE, [f"run.dir={run}", *ARGS])


def _algo(cfg):
    """The DQfD algorithm `finetune` builds without a BC policy, with the demonstrations added."""
    from rayapp.envs.atari import action_controls, make_atari_env
    from rayapp.frames import FrameSpec
    from rayapp.models import ModelSpec
    from rayapp.rl.finetune import build_algorithm
    from rayapp.rl.offline import demo_episodes

    frames = FrameSpec.from_config(cfg.data)
    probe = make_atari_env(cfg.env)
    (control,) = action_controls(probe)
    shape = probe.observation_space.shape
    probe.close()
    spec = ModelSpec(frames.input_shape(shape), ((control.name, control.n),), "cnn", cfg.model.hidden)
    algo = build_algorithm(cfg, spec, frames)
    for e in demo_episodes(cfg.data_uri, frames):
        algo.add_demo(e.frames, e.actions, e.rewards, e.terminated)
    return algo


def _demo_priorities(algo) -> np.ndarray:
    return algo.local_replay_buffer.demos.tree.tree.copy()


def _online(algo) -> dict:
    st = algo.local_replay_buffer.online.get_state()
    return {k: st[k].copy() for k in ("gidx", "action", "next", "priorities")}


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def test_a_truncated_newest_checkpoint_is_skipped_with_a_message(ray_session, tmp_path):
    from rayapp.rl.checkpoints import (
        checkpoint_root,
        complete_checkpoints,
        env_steps,
        restore_latest,
        save_checkpoint,
    )

    run = tmp_path / "run"
    record_demos(run)
    cfg = _cfg(run)
    root = checkpoint_root(str(run))
    algo = _algo(cfg)
    saved = []
    try:
        for _ in range(3):
            algo.train()
            algo.train()
            path = save_checkpoint(algo, root)
            buf = algo.local_replay_buffer
            saved.append({"path": path, "steps": env_steps(algo), "updates": algo.updates,
                          "online": _online(algo), "online_steps": buf.get_num_timesteps(), "demo": _demo_priorities(algo)})  # fmt: skip
    finally:
        algo.stop()
    assert [s for s, _ in complete_checkpoints(root)] == [saved[2]["steps"], saved[1]["steps"]]
    assert not os.path.exists(saved[0]["path"])  # older than the newest two: deleted
    assert os.path.basename(saved[1]["path"]) == f"{saved[1]['steps']:09d}"
    # the newest one damaged as a kill mid-write on a store without rename leaves it (marker and all)
    state_file = os.path.join(saved[2]["path"], "algorithm_state.pkl")
    data = open(state_file, "rb").read()
    open(state_file, "wb").write(data[: len(data) // 2])
    # and a newer folder a run was stopped while writing: no marker
    stray = os.path.join(root.path, "000999999")
    shutil.copytree(saved[1]["path"], stray)
    os.remove(os.path.join(stray, "complete.json"))

    algo = _algo(cfg)
    said: list[str] = []
    try:
        fresh = _demo_priorities(algo)
        demo_steps = algo.local_replay_buffer.demos.transitions
        assert not _same(fresh, saved[1]["demo"])  # the restore below has something to bring back
        r = restore_latest(algo, root, say=said.append)
        text = "\n".join(said)
        assert f"{stray} is an incomplete checkpoint" in text and not os.path.exists(stray)
        assert re.search(rf"checkpoint {saved[2]['path']} is unreadable \(\w*(Unpickling|EOF)\w*", text), text
        assert f"resumed from {saved[1]['path']} at env step {saved[1]['steps']:,} (online buffer: {saved[1]['online_steps']:,} steps" in text  # fmt: skip
        assert (
            (r.env_steps, r.updates)
            == (saved[1]["steps"], saved[1]["updates"])
            == (env_steps(algo), algo.updates)
        )
        assert _same(_online(algo), saved[1]["online"])
        assert _same(_demo_priorities(algo), saved[1]["demo"])
        # the demonstrations themselves are the ones added before the restore
        assert algo.local_replay_buffer.demos.transitions == demo_steps == r.demo_steps
        algo.train()  # and it trains on from there
        assert env_steps(algo) > saved[1]["steps"]

        # nothing readable left: one clear error naming the checkpoints, not a raw UnpicklingError
        state_file = os.path.join(saved[1]["path"], "algorithm_state.pkl")
        open(state_file, "wb").write(open(state_file, "rb").read()[:100])
        with pytest.raises(RayappError, match=r"no readable checkpoint to resume from in .*rllib: .*delete"):
            restore_latest(algo, root, say=said.append)
    finally:
        algo.stop()


POLICY_WRITER = """
import itertools, sys
from rayapp.frames import FrameSpec
from rayapp.models import ModelSpec, build_model, save_policy
spec = ModelSpec((4, 84, 84), (("action", 4),))
net = build_model(spec)
print("ready", flush=True)
for i in itertools.count():
    save_policy(f"{sys.argv[1]}/final-{i % 3:08d}", net, spec, FrameSpec(), {"game": "Breakout"}, {}, {"i": i}, replace=True)
"""


def test_a_killed_policy_export_leaves_no_half_written_policy(tmp_path):
    """`finetune`'s exports (`replace=True`) are renamed into place: every policy folder a kill
    leaves loads; what it was writing is a `_tmp-` folder, never a policy."""
    from rayapp.models import load_policy, resolve_checkpoint

    folder = tmp_path / "policies"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    for delay in (0.05, 0.23, 0.41):
        p = subprocess.Popen([sys.executable, "-c", POLICY_WRITER, str(folder)], stdout=subprocess.PIPE,
                             env=env, start_new_session=True)  # fmt: skip
        assert p.stdout.readline() == b"ready\n"
        deadline = time.time() + 60
        while not (folder / "final-00000000").exists():  # the first export is in
            assert time.time() < deadline and p.poll() is None
            time.sleep(0.01)
        time.sleep(delay)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        p.stdout.close()
        names = os.listdir(folder)
        policies = [n for n in names if not n.startswith("_")]
        assert policies, names
        for n in policies:
            assert load_policy(str(folder / n)).meta["i"] >= 0
    # a folder holding weights but no policy.json (an export cut short on S3) is no policy
    half = folder / "online-00000064"
    half.mkdir()
    shutil.copy(folder / policies[0] / "model.safetensors", half / "model.safetensors")
    with pytest.raises(RayappError, match="no checkpoint at"):
        resolve_checkpoint(str(half))


def test_the_next_export_of_a_policy_removes_what_a_killed_one_left(tmp_path):
    """A kill between writing aside and renaming leaves `_tmp-<hex>-<name>` (and, mid-replace,
    `_old-<hex>-<name>`): the next export of that name removes them; other names' are left alone."""
    from rayapp.frames import FrameSpec
    from rayapp.models import ModelSpec, build_model, load_policy, save_policy

    folder = tmp_path / "policies"
    spec = ModelSpec((4, 84, 84), (("action", 4),))
    net = build_model(spec)
    for left in (
        "_tmp-0123abcd-final-00000001",
        "_old-89abcdef-final-00000001",
        "_tmp-0123abcd-final-00000002",
    ):
        (folder / left).mkdir(parents=True)
        (folder / left / "model.safetensors").write_bytes(b"half")
    save_policy(
        str(folder / "final-00000001"),
        net,
        spec,
        FrameSpec(),
        {"game": "Breakout"},
        {},
        {"i": 1},
        replace=True,
    )
    assert sorted(os.listdir(folder)) == ["_tmp-0123abcd-final-00000002", "final-00000001"]
    assert load_policy(str(folder / "final-00000001")).meta["i"] == 1
