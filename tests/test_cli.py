"""The `rayapp` command: record + inspect, and one-line errors for bad storage."""

import json
import os
import socket
import subprocess
import sys
import time

import cv2
import pytest
from conftest import SMOKE

from rayapp.cli import main


def run_cli(*args, env=None, timeout=120):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "rayapp.cli", *args], capture_output=True, text=True, timeout=timeout, env=e
    )


def one_line_error(p):
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in p.stderr, p.stderr
    assert len(lines) == 1, p.stderr
    return lines[0]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, ray_session):
    run = tmp_path_factory.mktemp("cli")
    assert main(["record", "--config", SMOKE, "--set", f"run.dir={run}", "--set", "record.episodes=3"]) == 0
    return run


def test_inspect_reports_and_draws(recorded, capsys):
    uri = str(recorded / "replays")
    out = recorded / "sheet.png"
    assert main(["inspect", uri, "--config", SMOKE, "--sample", "9", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "episodes  3 (3 complete)   steps 600" in text
    for col in (
        "episode_id:string",
        "obs:binary",
        "action:int32",
        "reward:float",
        "teacher_action:int32",
        "lives:int16",
    ):
        assert col in text
    n_shards = len(os.listdir(recorded / "replays" / "shards"))
    assert "x smaller than raw uint8 frames" in text and f"{n_shards} valid, 0 corrupt" in text
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 3 * 210 and img.shape[1] >= 3 * 160  # 9 frames, 3x3 or wider
    assert main(["inspect", uri, "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["episodes"] == 3 and j["steps"] == 600 and j["ok"] is True
    assert sum(j["actions"]["action"].values()) == 600
    assert set(j["actions"]["action"]) == {"NOOP", "FIRE", "RIGHT", "LEFT"}
    assert j["compression_vs_raw"] > 50
    assert j["score"]["min"] <= j["score"]["mean"] <= j["score"]["max"]


def test_inspect_names_a_corrupt_shard_and_fails(recorded, tmp_path, capsys):
    import shutil

    copy = tmp_path / "replays"
    shutil.copytree(recorded / "replays", copy)
    shard = sorted((copy / "shards").iterdir())[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 3])
    assert main(["inspect", str(copy)]) == 1
    out = capsys.readouterr()
    assert f"CORRUPT {shard}: unreadable Parquet" in out.out
    assert "1 corrupt shard(s)" in out.err


def test_missing_dataset_is_one_line(tmp_path):
    p = run_cli("inspect", str(tmp_path / "nope"))
    assert p.returncode == 1
    assert "no replay dataset at" in one_line_error(p)


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_s3_fails_fast_before_ray(tmp_path):
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_closed_port()}",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
    }
    t = time.time()
    p = run_cli(
        "record",
        "--config",
        SMOKE,
        "--set",
        f"run.dir={tmp_path}",
        "--set",
        "data.uri=s3://replays/breakout",
        env=env,
    )
    assert p.returncode == 1
    line = one_line_error(p)
    assert "s3://replays/breakout: cannot reach the S3 endpoint http://127.0.0.1:" in line
    assert time.time() - t < 60
    p = run_cli("inspect", "s3://replays/breakout", env=env)
    assert p.returncode == 1 and "cannot reach the S3 endpoint" in one_line_error(p)


def test_missing_bucket_is_named(s3_server, tmp_path):
    p = run_cli(
        "record", "--config", SMOKE, "--set", f"run.dir={tmp_path}", "--set", "data.uri=s3://no-such-bucket/x"
    )
    assert p.returncode == 1
    assert "bucket 'no-such-bucket' does not exist" in one_line_error(p)


@pytest.fixture
def strict_s3():
    """A second moto server that checks credentials (no unauthenticated actions allowed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="0")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


def test_wrong_credentials_are_named(strict_s3, tmp_path):
    env = {"AWS_ENDPOINT_URL": strict_s3, "AWS_ACCESS_KEY_ID": "AKIAWRONG", "AWS_SECRET_ACCESS_KEY": "wrong"}
    p = run_cli("inspect", "s3://replays/breakout", env=env)
    assert p.returncode == 1
    assert "refused the credentials; check AWS_ACCESS_KEY_ID" in one_line_error(p)
    p = run_cli(
        "record",
        "--config",
        SMOKE,
        "--set",
        f"run.dir={tmp_path}",
        "--set",
        "data.uri=s3://replays/b",
        env=env,
    )
    assert p.returncode == 1 and "refused the credentials" in one_line_error(p)


def test_pipeline_records_then_skips(ray_session, tmp_path, capsys):
    args = [
        "pipeline",
        "--config",
        SMOKE,
        "--set",
        f"run.dir={tmp_path}",
        "--set",
        "record.episodes=2",
        "--stages",
        "record",
        "report",
    ]
    assert main(args) == 0
    first = capsys.readouterr()
    assert "[record] running" in first.err and "recorded 2 episodes" in first.out
    assert (tmp_path / "report.md").exists()
    # the same stages written as one comma-separated list (as configs/beat-teacher-*.yaml write them)
    assert main([*args[:-2], "record,report"]) == 0
    assert "[record] output exists" in capsys.readouterr().err


def test_failed_stage_says_which_and_how_to_resume(tmp_path):
    p = run_cli("pipeline", "--config", SMOKE, "--set", f"run.dir={tmp_path}", "--stages", "pretrain")
    assert p.returncode == 1
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("rayapp")]
    assert len(errors) == 1 and "Traceback" not in p.stderr, p.stderr
    line = errors[0]
    assert (
        "stage 'pretrain' failed: no replay dataset at" in line
        and "rerun the same command: finished stages are skipped" in line
    )
