"""Hot reload: the player watches the checkpoint location and swaps in newer weights between two steps.

`--checkpoint` is a policy folder (its `policy.json` is watched: trainers replace a folder whole,
rayapp.models.checkpoint.replace_checkpoint) or a run folder, local or `s3://`: there the marker the
trainers already write is watched, `<stage>/best.json` (the policy the trainer chose; `play.follow:
best`) or `<stage>/latest.json` (every policy `rayapp finetune` exports; `play.follow: latest`),
fine-tuning first, then pretraining. A marker with no `checkpoint` (pretrain's `latest.json` names
an epoch) falls back to that stage's `best.json`.

A background thread polls every `play.reload_poll_s` seconds, and when the marker changes it loads
the new checkpoint, checks that it fits (`check`), builds the new agent, and leaves it ready: the
loop only swaps a reference between two steps, so loading never stalls a frame. A reload that
fails (a partial upload, another network, storage down) is reported once per distinct error and
the old weights keep playing; the next poll tries again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rayapp.errors import RayappError, StorageError
from rayapp.models.checkpoint import POLICY_FILE, PolicyCheckpoint, load_policy
from rayapp.storage import exists, read_bytes, resolve

__all__ = ["CheckpointWatcher", "Reload", "checkpoint_age_s"]

STAGES = ("finetune", "pretrain")


@dataclass
class Reload:
    uri: str  # the checkpoint folder now playing
    checkpoint: PolicyCheckpoint
    agent: Any
    seconds: float  # how long loading took in the background
    found_at: float  # monotonic time the change was seen


def checkpoint_age_s(ckpt: PolicyCheckpoint) -> float | None:
    """Seconds since the checkpoint was written, from its weights file's modification time."""
    try:
        loc = resolve(ckpt.path).join("model.safetensors")
        info = loc.fs.get_file_info(loc.path)
        return max(0.0, time.time() - info.mtime.timestamp()) if info.mtime is not None else None
    except Exception:  # noqa: BLE001 - the age is for the console only
        return None


class CheckpointWatcher:
    """Polls `source` in a thread; `take()` returns a ready `Reload` once per change (else None)."""

    def __init__(self, source: str, follow: str, poll_s: float, current: str,
                 build: Callable[[PolicyCheckpoint], Any], say: Callable[[str], None] = print):  # fmt: skip
        self.source, self.follow, self.poll_s = source, follow, poll_s
        self.build, self.say = build, say
        self.loc = resolve(source)
        self.folder = exists(self.loc.join(POLICY_FILE))  # a policy folder, not a run folder
        self.stamp = self._stamp_or_none()
        self.current = current
        self.failures: list[str] = []
        self.polls = 0
        self._ready: Reload | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reported: str | None = None
        self._thread = threading.Thread(target=self._run, name="checkpoint-watcher", daemon=True)
        self._thread.start()

    # ---- where the checkpoint is ------------------------------------------------------------
    def target(self) -> tuple[str, bytes]:
        """(checkpoint folder, the bytes whose change means new weights)."""
        if self.folder:
            return self.loc.uri, read_bytes(self.loc.join(POLICY_FILE))
        for stage in STAGES:
            for name in dict.fromkeys((f"{self.follow}.json", "best.json")):
                marker = self.loc.join(stage, name)
                if not exists(marker):
                    continue
                raw = read_bytes(marker)
                target = json.loads(raw).get("checkpoint")
                if target:
                    return target, raw
        raise RayappError(f"{self.source}: no {self.follow}.json or best.json under {' or '.join(STAGES)}/")

    def _stamp_or_none(self) -> bytes | None:
        try:
            return self.target()[1]
        except (RayappError, StorageError, ValueError):
            return None

    # ---- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def poll(self) -> Reload | None:
        """One look (the thread calls it; tests may too). A change is loaded and left ready."""
        self.polls += 1
        try:
            uri, stamp = self.target()
            if stamp == self.stamp:
                return None
            found = time.monotonic()
            t0 = time.perf_counter()
            ckpt = load_policy(uri)
            agent = self.build(ckpt)  # checks the fit first; raises RayappError when it does not
            ready = Reload(uri, ckpt, agent, time.perf_counter() - t0, found)
        except (RayappError, StorageError, ValueError, OSError) as e:
            msg = f"reload from {self.source} failed: {e}; still playing {self.current}"
            if msg != self._reported:  # once per distinct error, not every poll
                self._reported = msg
                self.failures.append(msg)
                self.say(msg)
            return None
        with self._lock:
            self._ready = ready
            self.stamp, self.current, self._reported = stamp, uri, None
        return ready

    def take(self) -> Reload | None:
        with self._lock:
            ready, self._ready = self._ready, None
        return ready

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=max(5.0, self.poll_s))
