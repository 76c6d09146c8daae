"""Storage that goes away mid-training: bounded retries, one last line, resume when it is back.

Each outage test runs `rayapp pretrain` as a user would (a subprocess with its own Ray, 2 CPUs)
against its own loopback S3 server (not the session's `s3_server`), stops the server mid-run,
checks what the console shows, starts the server again on the same port (moto keeps its buckets
in the process, so the objects are still there) and reruns the same command.
"""

import csv
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time

import boto3
import pyarrow as pa
import pytest
from conftest import SMOKE

from rayapp.errors import StorageError, find_error
from rayapp.record import record
from rayapp.storage import read_bytes, resolve, retry_io


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class OutageS3:
    """A ThreadedMotoServer on a fixed port that can go away and come back with its objects."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._cls = ThreadedMotoServer
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server = None
        self.start()
        self.client = boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id="t", aws_secret_access_key="t", region_name="us-east-1"
        )  # fmt: skip
        self.bucket = f"outage-{self.port}"
        self.client.create_bucket(Bucket=self.bucket)
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "t",
            "AWS_SECRET_ACCESS_KEY": "t",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self):
        self.server = self._cls(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self):
        if self.server is not None:
            self.server.stop()
            self.server = None

    def upload(self, folder: str, prefix: str):
        for d, _, files in os.walk(folder):
            for f in files:
                p = os.path.join(d, f)
                self.client.upload_file(p, self.bucket, f"{prefix}/{os.path.relpath(p, folder)}")

    def text(self, key: str) -> str:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read().decode()


@pytest.fixture
def outage_s3():
    s = OutageS3()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def replays(ray_session, tmp_path_factory):
    from rayapp.config import load_config

    root = tmp_path_factory.mktemp("outage")
    cfg = load_config(SMOKE, [f"run.dir={root}/rec"])
    record(cfg, show_progress=False)
    return cfg.data_uri


def _pretrain(s3: OutageS3, data_uri: str, run_dir: str, epochs: int, stop_after_epoch: int | None):
    """Run `rayapp pretrain`; with `stop_after_epoch`, stop the server once that epoch's line is
    printed. Returns (exit code, console lines, seconds from the stop to the exit)."""
    cmd = [sys.executable, "-m", "rayapp.cli", "pretrain", "--config", SMOKE, "--set", "ray.num_cpus=2",
           "--set", f"data.uri={data_uri}", "--set", f"run.dir={run_dir}", "--set", f"pretrain.epochs={epochs}"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(s3.env)
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timer = threading.Timer(400, p.kill)  # a hang fails the test instead of blocking the suite
    timer.start()
    lines, stopped = [], None
    for line in p.stdout:
        lines.append(line.rstrip("\n"))
        if (
            stopped is None
            and stop_after_epoch
            and f"pretrain epoch {stop_after_epoch}/{epochs}: loss" in line
        ):
            s3.stop()
            stopped = time.monotonic()
    rc = p.wait()
    timer.cancel()
    return rc, [ln for ln in lines if ln.strip()], (time.monotonic() - stopped) if stopped else None


def _check_one_last_line(rc, lines, waited, *, names: list[str]) -> str:
    out = "\n".join(lines)
    assert waited is not None, out[-3000:]
    assert rc == 1, out[-3000:]
    assert waited < 90, f"took {waited:.0f} s to give up after the storage went away"
    assert "Traceback" not in out and "Error in training function" not in out, out[-3000:]
    last = lines[-1]
    assert last.startswith("rayapp pretrain: error: "), out[-3000:]
    for name in names:
        assert name in last, last
    assert "cannot reach the S3 endpoint" in last and "rerun the same command" in last, last
    log = re.search(r"details and tracebacks: (\S+);", last)
    assert log and os.path.exists(log.group(1)), last
    text = open(log.group(1)).read()
    assert "Traceback" in text and "Could not connect" in text
    print(f"gave up {waited:.1f} s after the S3 server stopped; last line: {last}")
    return last


def test_dataset_storage_gone_mid_training_one_line_then_resume(replays, outage_s3, tmp_path):
    s3 = outage_s3
    s3.upload(replays, "replays")
    data_uri, run_dir = f"s3://{s3.bucket}/replays", str(tmp_path / "run")
    t0 = time.monotonic()
    rc, lines, waited = _pretrain(s3, data_uri, run_dir, epochs=3, stop_after_epoch=1)
    last = _check_one_last_line(
        rc, lines, waited, names=[s3.endpoint, f"s3://{s3.bucket}/replays/shards/", ".parquet (row group "]
    )
    assert f"details and tracebacks: {run_dir}/logs/pretrain.log;" in last
    epoch = int(re.search(r"resumes from the checkpoint of epoch (\d+)", last).group(1))
    t1 = time.monotonic()

    s3.start()  # the endpoint is back, with the same objects
    rc, lines, _ = _pretrain(s3, data_uri, run_dir, epochs=3, stop_after_epoch=None)
    out = "\n".join(lines)
    assert rc == 0, out[-3000:]
    assert f"pretrain: resumed from the checkpoint of epoch {epoch}" in out, out[-3000:]
    epochs = [int(r["epoch"]) for r in csv.DictReader(open(os.path.join(run_dir, "pretrain", "metrics.csv")))]
    assert epochs[-1] == 3 and epochs.count(1) == 1, epochs
    print(f"outage run {t1 - t0:.0f} s, resumed run {time.monotonic() - t1:.0f} s")


def test_run_dir_storage_gone_mid_training_one_line_then_resume(replays, outage_s3):
    s3 = outage_s3
    run_dir = f"s3://{s3.bucket}/run"
    t0 = time.monotonic()
    rc, lines, waited = _pretrain(s3, replays, run_dir, epochs=2, stop_after_epoch=1)
    last = _check_one_last_line(rc, lines, waited, names=[s3.endpoint, f"s3://{s3.bucket}/run"])
    assert "/rayapp-logs/" in last  # run.dir is the storage that failed: the log is kept locally
    t1 = time.monotonic()

    s3.start()
    rc, lines, _ = _pretrain(s3, replays, run_dir, epochs=2, stop_after_epoch=None)
    out = "\n".join(lines)
    assert rc == 0, out[-3000:]
    assert "pretrain: resumed from the checkpoint of epoch 1" in out, out[-3000:]
    assert "pretrain epoch 2/2: loss" in out and "pretrain epoch 1/2: loss" not in out, out[-3000:]
    assert json.loads(s3.text("run/pretrain/latest.json"))["epoch"] == 2
    print(f"outage run {t1 - t0:.0f} s, resumed run {time.monotonic() - t1:.0f} s")


def test_transient_errors_are_retried_with_backoff_then_named(monkeypatch):
    """A read against a stopped server waits for it (bounded), or gives up with one StorageError."""
    monkeypatch.setenv("RAYAPP_IO_RETRY_DELAY", "0.2")  # 0.2 + 0.4 + 0.8 + 1.6 s
    s3 = OutageS3()
    try:
        for k, v in s3.env.items():
            monkeypatch.setenv(k, v)
        s3.client.put_object(Bucket=s3.bucket, Key="x/dataset.json", Body=b"{}")
        loc = resolve(f"s3://{s3.bucket}/x/dataset.json")
        s3.stop()
        t = time.monotonic()
        with pytest.raises(StorageError) as e:
            read_bytes(loc)
        took = time.monotonic() - t
        assert 3.0 <= took < 20, took
        assert f"cannot reach the S3 endpoint {s3.endpoint}" in str(e.value)
        assert "gave up after 5 attempts" in str(e.value)

        threading.Timer(0.5, s3.start).start()  # back within the retry window
        assert read_bytes(loc) == b"{}"
        # not transient: no retries
        t = time.monotonic()
        with pytest.raises(StorageError, match="not found"):
            read_bytes(resolve(f"s3://{s3.bucket}/x/missing.json"))
        assert time.monotonic() - t < 2
    finally:
        s3.stop()


def test_find_error_unwraps_ray_train_and_ray_data(ray_session):
    """The StorageError a read task raised, through the wrappers it reaches the driver in; Ray
    Data's note about its own retries is cut. Fails if Ray Train's private `_base_exc` moves."""
    import ray
    from ray.train import ControllerError, WorkerGroupError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    @ray.remote
    def read_task():
        raise StorageError("s3://b/shards/a.parquet (row group 1): cannot reach the S3 endpoint")

    try:
        ray.get(read_task.remote())
    except Exception as e:  # noqa: BLE001
        task_error = e
    task_error.cause.args = (task_error.cause.args[0] + "\nFailed to apply UDF transform after 1/1 attempts",)
    wrapped = UserExceptionWithTraceback(task_error, traceback_str="Traceback ...")
    for outer in (WorkerGroupError("rank 0 failed", {0: wrapped}), ControllerError(wrapped)):
        found = find_error(outer, StorageError)
        assert type(found) is StorageError
        assert str(found) == "s3://b/shards/a.parquet (row group 1): cannot reach the S3 endpoint"
    assert find_error(WorkerGroupError("x", {0: ValueError("y")}), StorageError) is None
    assert isinstance(
        find_error(ControllerError(pa.ArrowIOError("AWS Error NETWORK_CONNECTION")), OSError), OSError
    )
    assert retry_io(lambda: 7, "s3://b/x") == 7


def test_console_hook_into_ray_log_forwarding_exists():
    """rayapp.console swaps Ray's private `ray_print_logs` handler: fail loudly if it moves."""
    import ray._private.worker as rw

    d = rw.global_worker_stdstream_dispatcher
    assert callable(d.add_handler) and callable(d.remove_handler) and isinstance(d.handlers, list)
    assert callable(rw.print_to_stdstream) and callable(rw._should_ignore_worker_log_prefix)
    import inspect

    assert '"ray_print_logs"' in inspect.getsource(rw)


def test_console_routes_worker_stderr_to_the_log_only(tmp_path):
    """Workers' stdout reaches the console, their stderr only the log file; --debug shows both."""
    from rayapp import console

    printed = []
    try:
        for debug in (False, True):
            path = console.start("pretrain", str(tmp_path / "run"), debug=debug)
            assert path == str(tmp_path / "run" / "logs" / "pretrain.log")
            console._worker_lines(
                {"lines": ["pretrain epoch 1/3"], "is_err": False, "pid": 1}, printed.append
            )
            console._worker_lines({"lines": ["Traceback (most recent call last):"], "is_err": True, "pid": 2}, printed.append)  # fmt: skip
            console.finish()  # after this, nothing more reaches the console
            console._worker_lines({"lines": ["late"], "is_err": False, "pid": 1}, printed.append)
            assert console.where() == f" (details and tracebacks: {path}; --debug shows them here)"
    finally:
        console._close()
    assert [d["lines"][0] for d in printed] == ["pretrain epoch 1/3", "pretrain epoch 1/3", "Traceback (most recent call last):"]  # fmt: skip
    text = open(path).read()
    assert text.count("(pid=2 err) Traceback") == 2 and text.count("late") == 2


@pytest.mark.parametrize(
    "msg",
    [
        "AWS Error NETWORK_CONNECTION during PutObject operation: curlCode: 56, Failure when receiving data from the peer",
        "AWS Error UNKNOWN (HTTP status 0) during UploadPart operation: curlCode: 52, Server returned nothing (no headers, no status code, no data)",
        "AWS Error UNKNOWN during CompleteMultipartUpload operation: Connection reset by peer",
        "When uploading part for key 'x': [Errno 32] Broken pipe",
    ],
)
def test_an_endpoint_lost_mid_request_is_named_as_unreachable_and_retried(monkeypatch, msg):
    """An S3 server that dies while a shard is going up fails the request part-way (curl 52/55/56,
    reset, broken pipe), not at connect: the same one line as an endpoint that cannot be reached,
    and worth the same bounded retries."""
    from rayapp.storage import explain, is_transient

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    err = OSError(msg)
    line = explain("s3://b/x/shards/a.parquet", err)
    assert line.startswith(
        "s3://b/x/shards/a.parquet: cannot reach the S3 endpoint http://127.0.0.1:9; check AWS_ENDPOINT_URL"
    ), line
    assert is_transient(err)
