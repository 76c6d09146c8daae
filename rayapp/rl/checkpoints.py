"""The RLlib checkpoints of `rayapp finetune`: written whole or not at all, resumed from the newest
complete one, replay buffer included.

Layout: `<run.dir>/finetune/rllib/<env steps, 9 digits>/` holds what `algo.save_to_path` writes,
`replay_buffer.pkl` (the online replay buffer and the demonstrations' priorities) and, written
last, `complete.json` (env steps, updates, buffer sizes). A folder without `complete.json` is one a
run was stopped while writing: a rerun ignores it and removes it. Locally a checkpoint is written
into `rllib/_tmp-...` and renamed into place (object stores have no atomic rename: there the
marker alone decides). The newest `KEEP` complete checkpoints are kept, older ones deleted.

Demonstrations are not saved: every run reads them from the dataset again and adds them before
`restore_latest`, which then restores their priorities (`rayapp.rl.buffer`'s state holds a
fingerprint of them; other demonstrations keep fresh priorities, and it says so). Like RLlib's own state files,
`replay_buffer.pkl` is a pickle: give write access to the run folder only to those you trust.

A checkpoint of the old layout (RLlib's files directly in `rllib/`, no buffer) is resumed when no
new-layout one is usable; its online buffer refills from scratch.
"""

from __future__ import annotations

import json
import os
import pickle
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rayapp.errors import RayappError, StorageError
from rayapp.storage import (
    Location,
    delete,
    exists,
    is_storage_failure,
    list_dir,
    read_bytes,
    read_stream,
    resolve,
    write_bytes_atomic,
    write_stream,
)

__all__ = [
    "MARKER",
    "BUFFER_FILE",
    "KEEP",
    "Resumed",
    "checkpoint_root",
    "complete_checkpoints",
    "latest_checkpoint",
    "save_checkpoint",
    "restore_latest",
    "env_steps",
    "curve_until",
    "resumed_curve",
    "next_due",
]

MARKER = "complete.json"  # written last: a checkpoint folder without it is not one
BUFFER_FILE = "replay_buffer.pkl"
LEGACY_FILE = "rllib_checkpoint.json"  # RLlib's own file; directly in rllib/ = the old layout
FORMAT = "rayapp.rllib-checkpoint/1"
KEEP = 2
_TEMP = ("_tmp-", "_old-")


@dataclass
class Resumed:
    path: str
    env_steps: int
    updates: int
    online_steps: int | None  # steps in the online replay buffer (None: not saved, old layout)
    demo_steps: int | None

    def describe(self) -> str:
        buf = (
            "not saved (old layout), refilled from scratch"
            if self.online_steps is None
            else f"{self.online_steps:,} steps"
        )
        demo = (
            ""
            if self.demo_steps is None
            else f", demonstrations: {self.demo_steps:,} steps with their priorities"
        )
        return f"resumed from {self.path} at env step {self.env_steps:,} (online buffer: {buf}{demo}; {self.updates:,} updates)"


def checkpoint_root(run_dir: str) -> Location:
    return resolve(run_dir).join("finetune", "rllib")


def env_steps(algo) -> int:
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME

    return int(algo.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0) or 0)


def _scan(root: Location) -> tuple[list[tuple[int, Location]], list[Location]]:
    """(complete checkpoints newest first, incomplete folders)."""
    complete, incomplete = [], []
    for name, is_dir in list_dir(root):
        if not is_dir:
            continue
        if name.startswith(_TEMP):
            incomplete.append(root.join(name))
        elif name.isdigit():
            loc = root.join(name)
            (complete.append((int(name), loc)) if exists(loc.join(MARKER)) else incomplete.append(loc))
    return sorted(complete, key=lambda c: c[0], reverse=True), incomplete


def complete_checkpoints(root: Location) -> list[tuple[int, Location]]:
    """(env steps, folder) of the complete checkpoints, newest first."""
    return _scan(root)[0]


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest complete checkpoint folder of a run (a path or URI), None when there is none."""
    found = complete_checkpoints(checkpoint_root(run_dir))
    if not found:
        return None
    loc = found[0][1]
    return loc.path if loc.is_local else loc.uri


# ---- the replay buffer's state ------------------------------------------------------------------
def buffer_state(algo) -> dict[str, Any]:
    """The replay buffer's `get_state()`: its online part whole, the demonstrations' priorities
    (the demonstrations themselves are re-read from the dataset)."""
    return {"format": FORMAT, "buffer": algo.local_replay_buffer.get_state()}


def set_buffer_state(algo, state: dict[str, Any], say: Callable[[str], None]) -> bool:
    """Restore the replay buffer; True when the demonstrations' priorities came back too (the
    same demonstrations were added again), else they start afresh and it says so."""
    if state.get("format") != FORMAT or "buffer" not in state:
        raise ValueError(f"{BUFFER_FILE} is not a {FORMAT} file of this version")
    restored = algo.local_replay_buffer.set_state(state["buffer"])
    if not restored:
        buf = algo.local_replay_buffer
        say(f"finetune: the demonstrations changed since the checkpoint ({buf.demos.transitions:,} steps now, "
            f"{state['buffer']['demos']['fingerprint'][2]:,} then): their priorities start afresh")  # fmt: skip
    return restored


# ---- saving -------------------------------------------------------------------------------------
def _write_into(algo, loc: Location, meta: dict[str, Any]) -> None:
    algo.save_to_path(loc.path, filesystem=loc.fs)
    state = buffer_state(algo)
    write_stream(loc.join(BUFFER_FILE), lambda f: pickle.dump(state, f, protocol=5))
    write_bytes_atomic(loc.join(MARKER), (json.dumps(meta, indent=1) + "\n").encode())


def save_checkpoint(algo, root: Location, keep: int = KEEP) -> str:
    """Checkpoint the algorithm and its buffers at its env step into `root/<step>/`; returns the folder."""
    steps = env_steps(algo)
    buf = algo.local_replay_buffer
    meta = {"format": FORMAT, "env_steps": steps, "updates": int(algo.updates), "offline_updates": int(algo.offline_done),
            "online_buffer_steps": buf.get_num_timesteps(), "demo_steps": buf.demos.transitions, "time": time.time()}  # fmt: skip
    name = f"{steps:09d}"
    final = root.join(name)
    if root.is_local:
        os.makedirs(root.path, exist_ok=True)
        tmp = root.join(f"_tmp-{name}-{uuid.uuid4().hex[:8]}")
        _write_into(algo, tmp, meta)
        if os.path.exists(final.path):  # an earlier checkpoint at the same step: replaced whole
            old = root.join(f"_old-{name}-{uuid.uuid4().hex[:8]}")
            os.rename(final.path, old.path)
            os.rename(tmp.path, final.path)
            delete(old)
        else:
            os.rename(tmp.path, final.path)
    else:
        delete(final.join(MARKER))  # an earlier checkpoint at the same step stops being one first
        delete(final)
        _write_into(algo, final, meta)
    for _, loc in complete_checkpoints(root)[keep:]:
        delete(loc.join(MARKER))  # not a checkpoint any more, even if the rest is left half-deleted
        delete(loc)
    return final.path if final.is_local else final.uri


# ---- resuming -----------------------------------------------------------------------------------
def _restore(algo, loc: Location, say: Callable[[str], None]) -> Resumed:
    meta = json.loads(read_bytes(loc.join(MARKER)))
    state = read_stream(loc.join(BUFFER_FILE), pickle.load)
    algo.restore_from_path(loc.path, filesystem=loc.fs)  # a later one that fails overwrites it all
    steps = env_steps(algo)
    if steps != int(meta["env_steps"]):
        raise ValueError(f"holds env step {steps}, its {MARKER} says {meta['env_steps']}")
    # last: both files were read whole, nothing is left to fail
    demo_restored = set_buffer_state(algo, state, say)
    algo.sync_env_runners()
    buf = algo.local_replay_buffer
    return Resumed(loc.path if loc.is_local else loc.uri, steps, int(algo.updates), buf.get_num_timesteps(),
                   buf.demos.transitions if demo_restored else None)  # fmt: skip


def restore_latest(algo, root: Location, say: Callable[[str], None] = print) -> Resumed | None:
    """Restore the newest readable complete checkpoint under `root` (demonstrations already added)
    and say which; incomplete ones are removed, unreadable ones skipped with a message. None: no
    checkpoint, a fresh start."""
    complete, incomplete = _scan(root)
    for loc in incomplete:
        say(f"finetune: {loc.uri} is an incomplete checkpoint (a run was stopped while writing it): removed")
        delete(loc)
    unreadable = []
    for _, loc in complete:
        try:
            r = _restore(algo, loc, say)
        except StorageError:
            raise
        except Exception as e:  # noqa: BLE001 - a damaged file fails in pickle, json, RLlib or torch
            if isinstance(e, OSError) and is_storage_failure(e):
                raise StorageError(f"{loc.uri}: storage failed while reading the checkpoint: {e}") from e
            why = " ".join(f"{type(e).__name__}: {e}".split())[:200]
            say(f"finetune: checkpoint {loc.uri} is unreadable ({why}); trying the one before it")
            unreadable.append(loc.uri)
            continue
        say(f"finetune: {r.describe()}")
        return r
    if exists(root.join(LEGACY_FILE)):
        try:
            algo.restore_from_path(root.path, filesystem=root.fs)
        except Exception as e:  # noqa: BLE001 - as above
            if isinstance(e, OSError) and is_storage_failure(e):
                raise StorageError(f"{root.uri}: storage failed while reading the checkpoint: {e}") from e
            unreadable.append(f"{root.uri} (old layout: {type(e).__name__}: {str(e)[:120]})")
        else:
            algo.sync_env_runners()
            r = Resumed(root.path if root.is_local else root.uri, env_steps(algo), int(algo.updates), None, None)  # fmt: skip
            say(f"finetune: {r.describe()}")
            return r
    if unreadable:
        raise RayappError(
            f"no readable checkpoint to resume from in {root.uri}: {', '.join(unreadable)}; "
            f"delete {root.uri} to start the fine-tuning over (the offline phase runs again)"
        )
    return None


def curve_until(curve: list[dict[str, Any]], steps: int) -> list[dict[str, Any]]:
    """The points of a resumed run's curve up to its checkpoint: later ones and the final point
    are measured again."""
    return [p for p in curve if p.get("phase") != "final" and int(p.get("env_steps", 0)) <= steps]


def resumed_curve(curve_file: Location, resumed: Resumed | None) -> list[dict[str, Any]]:
    """The learning curve a run continues: [] for a fresh start."""
    if resumed is None or not exists(curve_file):
        return []
    return curve_until(json.loads(read_bytes(curve_file)), resumed.env_steps)


def next_due(steps: int, every: int) -> int | None:
    """The next multiple of `every` after `steps` (None: never)."""
    return (steps // every + 1) * every if every else None
