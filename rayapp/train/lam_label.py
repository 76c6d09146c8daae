"""`rayapp lam label`: write a dataset again with the latent action of every step.

    rayapp lam label --checkpoint runs/lam --input runs/video/replays --output runs/video/labelled

A Ray Data job over the input's shards: an actor pool (`lam.label_batch` pairs per forward pass,
the model loaded once per actor) reads each shard row group by row group, with the first frame of
the next row group (or the next shard of the same writer) as the next frame of the last row, and
writes the same rows with `latent_action` (the code of the pair (this frame, the next frame); the
joint code over positions when there are several) and `latent_codes` (one code per position) into a
shard of the same name; an episode's last step has no next frame and gets null. The output is a
dataset in the replay contract (its own `dataset.json`, with `latent_actions` describing the
vocabulary), shard by shard visible whole or not at all; a rerun skips the shards already written.
Each task also returns what the report needs (`rayapp.train.lam_report`): code usage, the
code-by-action table where the input has actions, and a few example pairs per code.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from rayapp.config import Config
from rayapp.errors import RayappError
from rayapp.frames import Preprocessor
from rayapp.models.lam import joint_code
from rayapp.models.lam_checkpoint import load_lam
from rayapp.replay.dataset import create_dataset
from rayapp.replay.reader import ReplayDataset
from rayapp.replay.schema import LATENT_VOCABULARY_MAX, DatasetInfo, decode_frames
from rayapp.replay.shard_file import SHARDS_DIR, OpenShard
from rayapp.runtime import init_ray
from rayapp.storage import exists, resolve, storage_errors
from rayapp.train.lam_report import LabelReport, write_report

__all__ = ["label_dataset", "LabelSummary", "labelled_info"]

EXAMPLES_PER_CODE = 6
THUMB_WIDTH = 80


@dataclass
class LabelSummary:
    output: str
    shards: int
    skipped: int
    pairs: int
    report: LabelReport
    report_dir: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        r = self.report
        mi = f", MI(code; action) {r.mutual_information:.3f} bits (shuffled {r.mutual_information_shuffled:.3f}), " \
             f"probe accuracy {r.probe_accuracy:.3f} (majority {r.majority_accuracy:.3f})" if r.has_actions else ""  # fmt: skip
        return (f"labelled {self.pairs:,} pairs into {self.output} ({self.shards} shards written, {self.skipped} already "
                f"there): {r.codes_used}/{r.codes} codes used, perplexity {r.perplexity:.1f}{mi}; report in "
                f"{self.report_dir}")  # fmt: skip


def labelled_info(src: DatasetInfo, spec, model_uri: str) -> DatasetInfo:
    vocab = spec.codes ** spec.n_positions
    extras = tuple(x for x in src.extras if x not in ("latent_action", "latent_codes"))
    return DatasetInfo(
        game=src.game,
        env_id=src.env_id,
        observation=src.observation,
        actions=src.actions,
        frame_rate=src.frame_rate,
        extras=(*extras, "latent_action", "latent_codes"),
        recorded_by={**src.recorded_by, "labelled_from": src.dataset_id},
        latent={"codes": spec.codes, "positions": spec.n_positions, "vocabulary": vocab if vocab <= 2**31 else 0,
                "model": model_uri, "source": src.dataset_id},  # fmt: skip
    )


def probe_hash(episode: str) -> int:
    """An episode's place in the probe's train/test split (31 bits of a hash of its id: the same
    in every shard, so Ray Data's actors need not agree on anything; `probe_train_mask` splits)."""
    return int.from_bytes(hashlib.sha1(episode.encode()).digest()[:4], "little") >> 1


class ShardLabeller:
    """A Ray Data actor: the model, once; one shard per call."""

    def __init__(self, lam_path: str, src_uri: str, out_info: dict, batch: int, threads: int):
        torch.set_num_threads(max(1, threads))
        ck = load_lam(lam_path)
        self.model, self.spec, self.frames = ck.model(), ck.spec, ck.frames
        self.src = ReplayDataset(src_uri)
        self.out = resolve(out_info["uri"])
        self.out_info = DatasetInfo.from_json(out_info["info"])
        self.pre = Preprocessor(self.frames, self.src.info.observation.shape)
        self.batch = batch

    def __call__(self, items: dict[str, np.ndarray]) -> dict[str, list]:
        rows: dict[str, list] = {"shard": [], "written": [], "pairs": [], "stats": []}
        for i in items["index"]:
            written, pairs, stats = self.label_shard(int(i))
            for k, v in zip(rows, (int(i), written, pairs, stats)):
                rows[k].append(v)
        return rows

    # ---- one shard -------------------------------------------------------------------------
    def _next_first(self, i: int) -> pa.Table | None:
        refs = self.src.shards
        if i + 1 < len(refs) and refs[i + 1].writer == refs[i].writer:
            pf = self.src._open_file(refs[i + 1])  # noqa: SLF001 - the reader's own opener (footer errors named)
            return pf.read_row_group(0, columns=["episode_id", "step", "obs"]).slice(0, 1)
        return None

    def label_shard(self, i: int) -> tuple[bool, int, bytes]:
        ref = self.src.shards[i]
        name = ref.uri.rsplit("/", 1)[-1]
        stats = _Stats(self.spec.codes, EXAMPLES_PER_CODE, self.src.info.observation)
        action_col = self.src.info.action_columns[0] if self.src.info.actions else None
        if exists(self.out.join(SHARDS_DIR, name)):  # a rerun: written before; its codes still count in the report
            self._stats_of_written(name, stats, action_col)
            return False, stats.pairs, _dump(stats.to_dict())
        pf = self.src._open_file(ref)  # noqa: SLF001
        self.src.check_footer(ref, pf)
        shard = OpenShard(self.out, self.out_info, ref.writer, ref.seq, 3)
        try:
            groups = [pf.read_row_group(g) for g in range(pf.num_row_groups)] if pf.num_row_groups else []
            nxt_shard = self._next_first(i)
            for g, table in enumerate(groups):
                nxt = groups[g + 1].slice(0, 1) if g + 1 < len(groups) else nxt_shard
                codes = self._codes(table, nxt)
                out = _with_latent(table, codes, self.spec.codes, shard.schema)
                shard.writer.write_table(out, row_group_size=len(out))
                shard.rows += len(out)
                for e in dict.fromkeys(table.column("episode_id").to_pylist()):
                    if not shard.episodes or shard.episodes[-1] != e:
                        shard.episodes.append(e)
                acts = table.column(action_col).to_numpy() if action_col else None
                stats.add(table, codes, acts, self.spec.codes)
            shard.publish(open_episode=None)
        except BaseException:
            shard.discard()
            raise
        return True, stats.pairs, _dump(stats.to_dict())

    def _stats_of_written(self, name: str, stats: _Stats, action_col: str | None) -> None:
        loc = self.out.join(SHARDS_DIR, name)
        with storage_errors(loc.uri):
            pf = pq.ParquetFile(loc.fs.open_input_file(loc.path))
            for g in range(pf.num_row_groups):
                t = pf.read_row_group(g)
                lists = t.column("latent_codes").to_pylist()
                codes = np.array([c if c is not None else [-1] * self.spec.n_positions for c in lists], np.int64)
                codes = codes.reshape(len(lists), self.spec.n_positions)
                acts = t.column(action_col).to_numpy() if action_col else None
                stats.add(t, codes, acts, self.spec.codes)

    def _codes(self, t: pa.Table, nxt: pa.Table | None) -> np.ndarray:
        """(rows, positions) codes; -1 where a row has no next frame in its episode."""
        n = t.num_rows
        ep = t.column("episode_id").to_numpy(zero_copy_only=False)
        step = t.column("step").to_numpy()
        frames = self.pre(decode_frames(t.column("obs"), self.src.info.observation))
        nxt_frame = None
        has_next = np.zeros(n, bool)
        has_next[:-1] = (ep[1:] == ep[:-1]) & (step[1:] == step[:-1] + 1)
        if nxt is not None and nxt.num_rows and n:
            same = nxt.column("episode_id")[0].as_py() == ep[-1] and int(nxt.column("step")[0].as_py()) == step[-1] + 1
            if same:
                has_next[-1] = True
                nxt_frame = self.pre(decode_frames(nxt.column("obs"), self.src.info.observation))
        following = np.concatenate([frames[1:], nxt_frame if nxt_frame is not None else frames[-1:]])
        codes = np.full((n, self.spec.n_positions), -1, np.int64)
        idx = np.flatnonzero(has_next)
        with torch.no_grad():
            for s in range(0, len(idx), self.batch):
                j = idx[s : s + self.batch]
                f_t = torch.from_numpy(frames[j]).float().div_(255.0)
                f_t1 = torch.from_numpy(following[j]).float().div_(255.0)
                codes[j] = self.model.encode(f_t, f_t1).cpu().numpy()
        return codes


def _with_latent(t: pa.Table, codes: np.ndarray, n_codes: int, schema: pa.Schema) -> pa.Table:
    valid = codes[:, 0] >= 0
    joint = np.full(len(codes), -1, np.int64)
    if n_codes ** codes.shape[1] <= 2**31:
        joint[valid] = np.asarray(joint_code(codes[valid], n_codes)).reshape(-1)
    cols = {c: t.column(c) for c in t.column_names if c not in ("latent_action", "latent_codes")}
    cols["latent_action"] = pa.array(np.where(joint >= 0, joint, 0).astype(np.int32), mask=joint < 0)
    lists = [row.astype(np.int16).tolist() if ok else None for row, ok in zip(codes, valid)]
    cols["latent_codes"] = pa.array(lists, type=pa.list_(pa.int16()))
    return pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)


class _Stats:
    """What one shard contributes to the report: code usage, (codes, true action, probe hash) per
    pair where the input has actions, and up to `per_code` example pairs (thumbnails) per code."""

    def __init__(self, codes: int, per_code: int, obs_spec):
        self.usage = np.zeros(codes, np.int64)
        self.keys: dict[int, int] = {}  # pairs per reported latent action
        self.probe: list[np.ndarray] = []
        self.examples: dict[int, list[np.ndarray]] = {}
        self.per_code, self.pairs, self.obs_spec = per_code, 0, obs_spec

    def add(self, t: pa.Table, codes: np.ndarray, acts: np.ndarray | None, n_codes: int) -> None:
        valid = codes[:, 0] >= 0
        self.pairs += int(valid.sum())
        self.usage += np.bincount(codes[valid].reshape(-1), minlength=len(self.usage))
        if acts is not None:
            split = np.array([probe_hash(e) for e in t.column("episode_id").to_pylist()], np.int64)
            self.probe.append(np.concatenate([codes, acts[:, None], split[:, None]], axis=1)[valid].astype(np.int32))
        keys = report_keys(codes, n_codes)
        for k, c in zip(*np.unique(keys[valid], return_counts=True)):
            self.keys[int(k)] = self.keys.get(int(k), 0) + int(c)
        inside = valid & (np.arange(len(codes)) < len(codes) - 1)  # both frames of the pair in this table
        for r in np.flatnonzero(inside):
            got = self.examples.setdefault(int(keys[r]), [])
            if len(got) < self.per_code:
                got.append(_thumbs(decode_frames(t.column("obs").slice(int(r), 2), self.obs_spec)))

    def to_dict(self) -> dict[str, Any]:
        return {"usage": self.usage, "keys": self.keys, "probe": np.concatenate(self.probe) if self.probe else None,
                "examples": {k: np.stack(v) for k, v in self.examples.items()}}  # fmt: skip


def report_keys(codes: np.ndarray, n_codes: int) -> np.ndarray:
    """The latent action a pair is reported under: its joint code when that is a usable vocabulary,
    else the code of its first position."""
    if codes.shape[1] == 1:
        return codes[:, 0]
    if n_codes ** codes.shape[1] <= LATENT_VOCABULARY_MAX:
        return np.where(codes[:, 0] >= 0, np.asarray(joint_code(np.maximum(codes, 0), n_codes)).reshape(-1), -1)
    return codes[:, 0]


def _thumbs(frames: np.ndarray) -> np.ndarray:
    """(2, H, W[, C]) source frames -> (2, h, THUMB_WIDTH, 3) uint8 thumbnails."""
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    h, w = frames.shape[1:3]
    if w > THUMB_WIDTH:
        size = (THUMB_WIDTH, max(1, round(h * THUMB_WIDTH / w)))
        frames = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])
    return frames


def _dump(d: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(d, buf)
    return buf.getvalue()


def label_dataset(cfg: Config, input_uri: str, output_uri: str) -> LabelSummary:
    import ray

    lam_path = cfg.lam.checkpoint or cfg.run.dir
    ck = load_lam(lam_path)
    src = ReplayDataset(input_uri)
    try:
        shape = ck.frames.frame_shape(src.info.observation.shape)
    except ValueError as e:
        raise RayappError(f"{input_uri}: its frames do not fit the latent action model {ck.path}: {e}") from None
    if shape != (ck.spec.in_channels, ck.spec.height, ck.spec.width):
        raise RayappError(
            f"{input_uri}: frames of {src.info.observation.shape} become {shape} for the model, which was trained "
            f"on {(ck.spec.in_channels, ck.spec.height, ck.spec.width)} ({ck.path})"
        )
    if not src.shards:
        raise RayappError(f"{input_uri} has no shards to label")
    info = labelled_info(src.info, ck.spec, ck.path)
    out = resolve(output_uri)
    if exists(out.join("dataset.json")):
        prev = ReplayDataset(out)
        if prev.info.latent.get("source") != src.info.dataset_id or prev.info.latent.get("model") != ck.path:
            raise RayappError(f"{out.uri} already holds a dataset not labelled from {input_uri} with {ck.path}; "
                              "choose another --output")  # fmt: skip
        info = prev.info  # a rerun continues it: same dataset id, shards already written are kept
    else:
        create_dataset(out, info)
    init_ray(cfg.ray)
    items = ray.data.from_items([{"index": i} for i in range(len(src.shards))], override_num_blocks=len(src.shards))
    workers = max(1, min(len(src.shards), int(ray.available_resources().get("CPU", 1))))
    results = items.map_batches(
        ShardLabeller,
        fn_constructor_kwargs={"lam_path": ck.path, "src_uri": src.uri, "batch": cfg.lam.label_batch, "threads": 1,
                               "out_info": {"uri": out.uri, "info": info.to_json()}},  # fmt: skip
        batch_size=1,
        concurrency=workers,
        num_cpus=1,
    ).take_all()
    report, report_dir = write_report(cfg, ck, src, out.uri, results)
    written = sum(bool(r["written"]) for r in results)
    pairs = sum(int(r["pairs"]) for r in results)
    return LabelSummary(out.uri, written, len(results) - written, pairs, report, report_dir)
