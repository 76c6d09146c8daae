"""Shared fixtures: one local Ray per session, a real S3 server (moto) on loopback, tiny configs."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

ROOT = Path(__file__).resolve().parent.parent
SMOKE = str(ROOT / "configs" / "smoke.yaml")


def pytest_collection_modifyitems(config, items):
    """Tests that start their own Ray (`own_ray`) run first, before the shared session Ray exists,
    so that no test ever sees two Ray instances on the machine (Ray's "auto" address lookups,
    used by Ray Train's own state checks, fail when there are several)."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("own_ray") else 1)


@pytest.fixture(scope="session")
def s3_server():
    """moto's ThreadedMotoServer: a real S3 HTTP endpoint on 127.0.0.1, set as AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def bucket(s3_server):
    """A fresh bucket on the loopback S3 server."""
    import boto3

    name = f"replays-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


class LoopbackS3:
    """A private moto server on a fixed loopback port that a test may stop and start again.

    moto keeps its state in-process, so what was stored before `stop()` is there after `start()`.
    """

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = None
        self.start()

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    @property
    def running(self) -> bool:
        return self._server is not None

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def keys(self, bucket: str) -> list[str]:
        import boto3

        listing = boto3.client("s3", endpoint_url=self.endpoint).list_objects_v2(Bucket=bucket)
        # keys ending in "/" are the empty directory markers pyarrow leaves: no data, not listed as files
        return sorted(o["Key"] for o in listing.get("Contents", []) if not o["Key"].endswith("/"))


@pytest.fixture
def own_s3(s3_server, monkeypatch):
    """A test's own S3 server (to stop mid-test without touching the session one), with a bucket
    `own_s3.bucket`, set as AWS_ENDPOINT_URL for this test; storage retries kept short."""
    import boto3

    server = LoopbackS3()
    server.bucket = f"own-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket=server.bucket)
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    monkeypatch.setenv("RAYAPP_IO_RETRIES", "2")
    monkeypatch.setenv("RAYAPP_IO_RETRY_DELAY", "0.2")
    monkeypatch.setenv("RAYAPP_S3_MAX_ATTEMPTS", "1")  # the writer's retries only: quick, countable
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """One local Ray for the whole session (4 logical CPUs on a 2-core machine).

    Started after the S3 server so workers inherit its AWS_* variables.
    """
    import ray

    ray.init(num_cpus=4, include_dashboard=True, logging_level=logging.ERROR, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def smoke_cfg(tmp_path):
    """configs/smoke.yaml with run.dir in a temporary folder; pass more overrides as arguments."""
    from rayapp.config import load_config

    def make(*overrides: str):
        return load_config(SMOKE, [f"run.dir={tmp_path / 'run'}", *overrides])

    return make


@pytest.fixture(scope="session")
def bc_run(ray_session, tmp_path_factory):
    """Six smoke episodes by the teacher and one epoch of BC on them (shared by the RL tests)."""
    from rayapp.config import load_config
    from rayapp.record import record
    from rayapp.train.bc import pretrain

    run = tmp_path_factory.mktemp("rl") / "run"
    cfg = load_config(
        SMOKE, [f"run.dir={run}", "record.episodes=6", "pretrain.epochs=1", "pretrain.num_workers=1"]
    )
    record(cfg, show_progress=False)
    pretrain(cfg)
    return str(run)


@pytest.fixture(scope="session")
def xvfb_server():
    """A private X server (Xvfb, 1280x720x24, no window manager) on a free display number for the
    whole session: yields its DISPLAY string (":N"). Skips where Xvfb is not installed (.ci/run
    installs it)."""
    import shutil
    import subprocess

    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb; .ci/run does)")
    read_fd, write_fd = os.pipe()
    # -displayfd: the server picks a free display number itself and writes it on this fd when ready
    proc = subprocess.Popen(
        [exe, "-displayfd", str(write_fd), "-screen", "0", "1280x720x24", "-nolisten", "tcp", "-noreset"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        number = f.readline().strip()
    if not number:
        proc.kill()
        pytest.fail(f"Xvfb exited ({proc.wait()}) without reporting a display number")
    yield f":{number}"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def display(xvfb_server, monkeypatch):
    """DISPLAY set to the session's Xvfb for this test."""
    monkeypatch.setenv("DISPLAY", xvfb_server)
    return xvfb_server


def held_keys(name: str) -> list[int]:
    """Keycodes the X server `name` holds down now (a fresh connection's query_keymap)."""
    from Xlib import display as xdisplay

    d = xdisplay.Display(name)
    try:
        return [i * 8 + b for i, byte in enumerate(d.query_keymap()) for b in range(8) if byte >> b & 1]
    finally:
        d.close()


@pytest.fixture
def xdisplay_(display):
    """The test X display, checked to hold no key before the test and after it."""
    pytest.importorskip("Xlib")
    pytest.importorskip("mss")
    assert held_keys(display) == []
    yield display
    assert held_keys(display) == [], "keys left pressed"


# ---- the arcade window (rayapp arcade in its own process) -----------------------------------------
TITLE = "rayapp arcade: Breakout"


def wait_for_window(title: str, timeout: float = 30.0):
    from rayapp.envs.screen import WindowFinder
    from rayapp.errors import CaptureError

    finder = WindowFinder()
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return finder.find(title), finder.rect(finder.find(title))
            except CaptureError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        finder.close()


class ArcadeProcess:
    """`rayapp arcade --game Breakout` in its own process, as a person would start it."""

    def __init__(self, display: str, *overrides: str):
        env = dict(os.environ, DISPLAY=display, PYTHONPATH=str(ROOT), SDL_AUDIODRIVER="dummy")
        args = [sys.executable, "-m", "rayapp.cli", "arcade", "--game", "Breakout"]
        for o in overrides:
            args += ["--set", o]
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.first_line = self.proc.stdout.readline()
        assert TITLE in self.first_line, self.first_line + self.proc.stderr.read()
        self.window, self.rect = wait_for_window(TITLE)

    def stop(self, sig: int | None = signal.SIGTERM) -> tuple[int, str, str]:
        """Signal it (None: only wait) and collect its exit status and output (once)."""
        if not hasattr(self, "result"):
            if sig is not None and self.proc.poll() is None:
                self.proc.send_signal(sig)
            out, err = self.proc.communicate(timeout=60)
            self.result = (self.proc.returncode, out, err)
        return self.result


@pytest.fixture
def arcade(display):
    assert held_keys(display) == [], "a previous test left keys pressed"
    a = ArcadeProcess(display)
    yield a
    a.stop()
    assert held_keys(display) == []


@pytest.fixture(autouse=True)
def _subnormals_as_ieee():
    """Every test starts with IEEE subnormals: a learner built by an earlier test in this process
    flushes them in the main thread (rayapp.models.numerics), which would change the subnormal
    arithmetic that tests such as the gamepad mapping's property tests assert."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_flush_denormal(False)
    yield
