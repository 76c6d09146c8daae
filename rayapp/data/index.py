"""One pass over a dataset's footers and light columns, on the driver, before any frame is read.

It checks every shard's footer against `dataset.json` (skipping corrupt shards under
`data.max_corrupt_shards`, counted), learns the row groups of each writer's stream (the units read
tasks are cut from), assigns every episode to train/val/test, and counts the labels of each split
(for balancing and for the shape checks before training starts). Reading `episode_id` and the
action columns costs about a microsecond per step; frames are not touched.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow.compute as pc

from rayapp.errors import CorruptShardError, ReplayFormatError
from rayapp.replay.reader import ReplayDataset, ShardCheck, ShardRef
from rayapp.replay.schema import LATENT_VOCABULARY_MAX

__all__ = ["GroupRef", "DatasetIndex", "SPLITS", "split_of", "latent_vocabulary"]

SPLITS = ("train", "val", "test")
UNUSED = "unused"  # training episodes left out by data.train_fraction / data.train_episodes
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2, UNUSED: 3}


@dataclass(frozen=True)
class GroupRef:
    """One row group of one shard: the smallest unit a read task takes."""

    shard: int  # index into DatasetIndex.shards
    group: int
    rows: int
    split_rows: tuple[int, int, int]  # rows of (train, val, test) episodes in this group


def latent_vocabulary(ds: ReplayDataset) -> int:
    """The number of distinct `latent_action` values of a dataset labelled by `rayapp lam label`."""
    latent = ds.info.latent
    if "latent_action" not in ds.info.extras or not latent:
        raise ReplayFormatError(
            f"data.label=latent_action but {ds.uri} has no latent_action column; label it first with "
            f"`rayapp lam label --input {ds.uri} --output URI` and train on the output"
        )
    vocab = int(latent.get("vocabulary", 0))
    if not 1 < vocab <= LATENT_VOCABULARY_MAX:
        raise ReplayFormatError(
            f"{ds.uri}: its latent actions have a joint vocabulary of {vocab} ({latent.get('codes')} codes at "
            f"{latent.get('positions')} positions), no action space to imitate (at most {LATENT_VOCABULARY_MAX}); "
            "train the latent action model with fewer lam.positions or lam.codes"
        )
    return vocab


def _unit(seed: int, episode_id: str) -> float:
    h = hashlib.sha1(f"{seed}:{episode_id}".encode()).digest()
    return int.from_bytes(h[:8], "little") / 2**64


def split_of(units: dict[str, float], val: float, test: float) -> dict[str, str]:
    """Episode -> split, by a hash threshold (stable when episodes are added), then at least one
    episode in training (the one whose hash lies highest: one or two episodes fell all outside it
    up to a fifth of the time), and one in val and in test when there are three or more."""
    out = {e: ("test" if u < test else "val" if u < test + val else "train") for e, u in units.items()}
    if units and "train" not in out.values():
        out[max(units, key=lambda e: units[e])] = "train"
    if len(units) >= 3:
        for name, frac in (("test", test), ("val", val)):
            if frac > 0 and name not in out.values():
                # the train episode whose hash lies closest to the split's range moves into it
                candidates = [e for e in units if out[e] == "train"]
                if len(candidates) > 1:
                    pick = min(candidates, key=lambda e: units[e])
                    out[pick] = name
    return out


@dataclass
class DatasetIndex:
    ds: ReplayDataset
    label_columns: list[str]
    shards: list[ShardRef] = field(default_factory=list)
    skipped: list[ShardCheck] = field(default_factory=list)
    streams: dict[str, list[GroupRef]] = field(default_factory=dict)
    episode_split: dict[str, str] = field(default_factory=dict)
    episode_rows: dict[str, int] = field(default_factory=dict)
    label_counts: dict[str, list[np.ndarray]] = field(default_factory=dict)  # split -> per control counts

    @property
    def info(self):
        return self.ds.info

    def rows(self, split: str | None = None) -> int:
        k = None if split is None else SPLITS.index(split)
        return sum(g.rows if k is None else g.split_rows[k] for s in self.streams.values() for g in s)

    def episodes(self, split: str) -> list[str]:
        return [e for e, s in self.episode_split.items() if s == split]

    @staticmethod
    def build(
        ds: ReplayDataset,
        label: str | None = "action",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        max_corrupt_shards: int = 0,
        threads: int = 8,
        train_fraction: float = 1.0,
        train_episodes: int = 0,
    ) -> DatasetIndex:
        """`train_fraction` / `train_episodes`: keep only that share / number of the training
        split's episodes (chosen by another hash of their ids); the others are in no split."""
        info = ds.info
        n_controls = [c.n for c in info.actions]
        if label is None:  # frame pairs for the latent action model: no labels at all
            label_cols, n_controls = [], []
        elif label == "latent_action":
            label_cols, n_controls = ["latent_action"], [latent_vocabulary(ds)]
        elif not info.actions:
            raise ReplayFormatError(
                f"{ds.uri} has no actions (unlabelled video: dataset.json's action_space is 'none'), so there is "
                f"nothing to imitate; label it with `rayapp lam label --input {ds.uri} --output URI` and pretrain "
                "on that with --set data.label=latent_action"
            )
        elif label == "teacher_action":
            if "teacher_action" not in info.extras:
                raise ReplayFormatError(
                    f"data.label=teacher_action but {ds.uri} has no teacher_action column"
                )
            if len(info.actions) != 1:
                raise ReplayFormatError("data.label=teacher_action needs a single discrete control")
            label_cols = ["teacher_action"]
        else:
            label_cols = list(info.action_columns)
        idx = DatasetIndex(ds, label_cols)

        def scan(ref: ShardRef):
            try:
                pf = ds._open_file(ref)
                ds.check_footer(ref, pf)
                groups = []
                for g in range(pf.num_row_groups):
                    t = pf.read_row_group(g, columns=["episode_id", *label_cols])
                    groups.append(t)
                return ref, groups, None
            except CorruptShardError as e:
                return ref, None, ShardCheck(ref.uri, False, e.problem, bytes=ref.size)
            except (OSError, ValueError) as e:
                return ref, None, ShardCheck(ref.uri, False, f"unreadable ({e})", bytes=ref.size)

        scanned = []
        with cf.ThreadPoolExecutor(max(1, threads)) as pool:
            for ref, groups, bad in pool.map(scan, ds.shards):
                if bad is not None:
                    idx.skipped.append(bad)
                    if len(idx.skipped) > max_corrupt_shards:
                        raise CorruptShardError(
                            bad.uri, bad.problem + (f" (data.max_corrupt_shards={max_corrupt_shards})")
                        )
                    continue
                scanned.append((ref, groups))
        # per-episode rows and label counts, then the split
        ep_rows: dict[str, int] = defaultdict(int)
        ep_counts: dict[str, list[np.ndarray]] = {}
        for _, groups in scanned:
            for t in groups:
                eps = t.column("episode_id")
                enc = pc.dictionary_encode(eps).combine_chunks()
                codes = enc.indices.to_numpy()
                names = enc.dictionary.to_pylist()
                for ci, col in enumerate(label_cols):
                    codes_of = codes
                    if col == "latent_action":  # null on an episode's last step: not a sample
                        valid = t.column(col).is_valid().to_numpy(zero_copy_only=False)
                        lab, codes_of = t.column(col).drop_null().to_numpy(), codes[valid]
                    else:
                        lab = t.column(col).fill_null(0).to_numpy()
                    if lab.size and (lab.min() < 0 or lab.max() >= n_controls[ci]):
                        raise ReplayFormatError(f"{col} outside 0..{n_controls[ci] - 1} in {ds.uri}")
                    for k, name in enumerate(names):
                        sel = lab[codes_of == k]
                        counts = ep_counts.setdefault(name, [np.zeros(n, np.int64) for n in n_controls])
                        counts[ci] += np.bincount(sel, minlength=n_controls[ci])
                for k, name in enumerate(names):
                    ep_rows[name] += int((codes == k).sum())
        units = {e: _unit(split_seed, e) for e in ep_rows}
        idx.episode_split = split_of(units, val_fraction, test_fraction)
        if train_fraction < 1.0 or train_episodes:
            train = sorted((e for e, sp in idx.episode_split.items() if sp == "train"), key=lambda e: _unit(split_seed + 1, e))
            keep = train_episodes or max(1, round(train_fraction * len(train)))
            for e in train[keep:]:
                idx.episode_split[e] = UNUSED
        idx.episode_rows = dict(ep_rows)
        idx.label_counts = {s: [np.zeros(n, np.int64) for n in n_controls] for s in SPLITS}
        for e, counts in ep_counts.items():
            for ci, c in enumerate(counts):
                if idx.episode_split[e] in idx.label_counts:
                    idx.label_counts[idx.episode_split[e]][ci] += c
        # streams of row groups, per writer, in order
        for ref, groups in scanned:
            si = len(idx.shards)
            idx.shards.append(ref)
            stream = idx.streams.setdefault(ref.writer, [])
            for g, t in enumerate(groups):
                split_ids = np.array(
                    [_SPLIT_CODE[idx.episode_split[e]] for e in t.column("episode_id").to_pylist()], np.int64
                )
                per = np.bincount(split_ids, minlength=4)
                stream.append(GroupRef(si, g, t.num_rows, (int(per[0]), int(per[1]), int(per[2]))))
        return idx
