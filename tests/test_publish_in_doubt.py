"""A shard's publish whose answer is lost: S3 moves by a copy then a delete, and a connection cut
after the copy took effect leaves the shard at its name while the writer hears only an error.

A real TCP proxy sits between the writer and the real (moto) S3 server and cuts the connection
right after the server received the copy; the record test that found this (CI, stop 23) had
stopped the server in that window by chance.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import numpy as np
import pytest
from test_replay_store import new_dataset, play

from rayapp.errors import StorageError
from rayapp.replay import ReplayDataset, ReplayWriter


@pytest.fixture(scope="module")
def breakout():
    return play(1, 40)


class CutAfterCopy:
    """Forwards TCP to the S3 server; the first copy request it sees is forwarded, carried out,
    and its connection cut before the answer. `stay_dead`: every later connection is cut too,
    until `heal()`."""

    def __init__(self, port: int, stay_dead: bool):
        self.port, self.stay_dead = port, stay_dead
        self.dead, self.copies = False, 0
        self.open: list[socket.socket] = []  # every connection's two ends: cut together
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def heal(self) -> None:
        self.dead = False

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if self.dead:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.port))
            self.open += [client, upstream]
            muted = threading.Event()  # set: the server's answers on this connection are dropped
            threading.Thread(target=self._answers, args=(upstream, client, muted), daemon=True).start()
            threading.Thread(target=self._requests, args=(client, upstream, muted), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket, muted: threading.Event) -> None:
        try:
            while data := client.recv(1 << 16):
                copy = b"x-amz-copy-source" in data.lower()
                self.copies += copy
                if copy and self.copies == 1:
                    muted.set()
                    upstream.sendall(data)
                    time.sleep(0.5)  # the server carries out the copy ...
                    self.dead = self.stay_dead
                    break  # ... and its answer never reaches the writer
                upstream.sendall(data)
        except OSError:
            pass
        for s in [client, upstream] + (self.open if self.dead else []):  # dead: kept-alive ones too
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    @staticmethod
    def _answers(upstream: socket.socket, client: socket.socket, muted: threading.Event) -> None:
        try:
            while data := upstream.recv(1 << 16):
                if not muted.is_set():
                    client.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def episode_through_proxy(own_s3, breakout, monkeypatch):
    """make(stay_dead) -> (uri, proxy, writer): a writer to a new dataset on the S3 server behind
    a proxy, holding one 30-step episode that `end_episode()` publishes (shard_mb is tiny)."""
    made = []

    def make(stay_dead: bool):
        env, eps = breakout
        uri = f"s3://{own_s3.bucket}/ds"
        info = new_dataset(uri, env)
        proxy = CutAfterCopy(own_s3.port, stay_dead)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        made.append(proxy)
        w = ReplayWriter(uri, info, "w0", shard_mb=0.001, row_group_rows=10)
        frames, acts, rews, terms, truncs = eps[0]
        w.begin_episode()
        for t in range(30):
            w.add_step(frames[t], acts[t], rews[t], False, t == 29, score=0.0)
        return uri, proxy, w

    yield make
    for p in made:
        p.close()


def test_a_publish_whose_answer_is_lost_for_good_says_the_shard_may_be_there(breakout, episode_through_proxy):
    uri, proxy, w = episode_through_proxy(stay_dead=True)
    with pytest.raises(StorageError) as err:
        w.end_episode()
    msg = str(err.value)
    assert msg.startswith(f"{uri}/shards/w0-00000.parquet: cannot reach the S3 endpoint {proxy.endpoint}"), (
        msg
    )
    assert msg.endswith("; the shard may have been published before the connection dropped"), msg
    assert w.shards == []
    proxy.heal()
    ds = ReplayDataset(uri)  # and it was: whole and readable
    assert [s.uri for s in ds.shards] == [f"{uri}/shards/w0-00000.parquet"]
    (ep,) = list(ds.iter_episodes())
    assert ep.length == 30 and ep.complete and np.array_equal(ep.obs, breakout[1][0][0][:30])


def test_a_publish_whose_answer_is_lost_once_finds_its_shard_landed(episode_through_proxy):
    uri, proxy, w = episode_through_proxy(stay_dead=False)
    w.end_episode()  # the retry sees the shard at its name: published once, not uploaded again
    assert [s.uri for s in w.shards] == [f"{uri}/shards/w0-00000.parquet"]
    assert proxy.copies == 1
    ds = ReplayDataset(uri)
    assert [s.uri for s in ds.shards] == [w.shards[0].uri] and ds.leftovers == []
    (ep,) = list(ds.iter_episodes())
    assert ep.length == 30 and ep.complete
