"""`rayapp inspect URI`: what a dataset holds, whether every shard is valid, and a look at its frames."""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import heapq
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
from pyarrow import fs as pafs

from rayapp.errors import CorruptShardError
from rayapp.replay.reader import ReplayDataset, ShardCheck, ShardRef
from rayapp.replay.schema import decode_frames
from rayapp.storage import Location, resolve, storage_errors, write_bytes_atomic

__all__ = ["InspectReport", "inspect_dataset", "contact_sheet"]


@dataclass
class _Sample:
    key: float
    episode: str
    step: int
    action: str
    reward: float
    frame: np.ndarray

    def __lt__(self, other: _Sample) -> bool:  # max-heap on key through negation
        return self.key > other.key


@dataclass
class InspectReport:
    uri: str
    info: dict[str, Any]
    checks: list[ShardCheck] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)
    steps: int = 0
    episode_scores: dict[str, float] = field(default_factory=dict)
    episode_lengths: dict[str, int] = field(default_factory=dict)
    complete: int = 0
    actions: dict[str, dict[str, int]] = field(default_factory=dict)
    latent_actions: dict[str, int] = field(default_factory=dict)  # `rayapp lam label`: code -> steps, most used first
    sessions: int = 0
    contact_sheet: str = ""
    frames_checked: bool = True

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.checks)

    @property
    def corrupt(self) -> list[ShardCheck]:
        return [c for c in self.checks if not c.ok]

    def score_stats(self) -> dict[str, float]:
        s = np.array(list(self.episode_scores.values()), dtype=np.float64)
        if not len(s):
            return {"mean": float("nan"), "min": float("nan"), "max": float("nan"), "std": float("nan")}
        return {"mean": float(s.mean()), "min": float(s.min()), "max": float(s.max()), "std": float(s.std())}

    def to_json(self) -> dict[str, Any]:
        obs = self.info["observation"]
        raw = self.steps * int(np.prod(obs["shape"]))
        return {
            "uri": self.uri,
            "game": self.info["game"],
            "episodes": len(self.episode_scores),
            "complete_episodes": self.complete,
            "steps": self.steps,
            "shards": len(self.checks),
            "corrupt_shards": [{"uri": c.uri, "problem": c.problem} for c in self.corrupt],
            "leftover_temporary_files": self.leftovers,
            "bytes": self.bytes,
            "bytes_per_frame": self.bytes / self.steps if self.steps else None,
            "compression_vs_raw": raw / self.bytes if self.bytes else None,
            "columns": self.columns,
            "score": self.score_stats(),
            "actions": self.actions,
            "latent_actions": self.latent_actions or None,
            "sessions": self.sessions,
            "contact_sheet": self.contact_sheet or None,
            "ok": self.ok,
        }

    def text(self) -> str:
        j = self.to_json()
        obs = self.info["observation"]
        shape = "x".join(str(x) for x in obs["shape"])
        enc = "raw+zstd" if obs["encoding"] == "raw" else f"jpeg q{obs['jpeg_quality']}"
        rb = self.info.get("recorded_by", {})
        lines = [
            f"dataset   {self.uri}",
            f"game      {self.info['game']} ({self.info['env_id']}), recorded by {rb.get('policy', '?')}, {self.sessions} session(s)",
            f"frames    {shape} {obs['dtype']}, {enc}, {self.info['frame_rate']:g} steps/s of game time",
            f"episodes  {j['episodes']} ({self.complete} complete)   steps {self.steps:,}   shards {len(self.checks)}   "
            f"{self.bytes / 2**20:.2f} MiB",
        ]
        if self.steps:
            lines.append(
                f"storage   {j['bytes_per_frame']:.0f} B/frame, {j['compression_vs_raw']:.0f}x smaller than raw uint8 frames"
            )
        lines.append("columns   " + "  ".join(f"{k}:{v}" for k, v in self.columns.items()))
        sc = j["score"]
        if self.episode_scores:
            lines.append(
                f"score     mean {sc['mean']:.1f}  std {sc['std']:.1f}  min {sc['min']:g}  max {sc['max']:g}  (per episode)"
            )
        if not self.actions:
            lines.append("actions   none (unlabelled video: rayapp lam label gives it latent actions)")
        if self.latent_actions:
            total = sum(self.latent_actions.values()) or 1
            top = list(self.latent_actions.items())[:8]
            lines.append(f"latent    {len(self.latent_actions)} codes used; most used: "
                         + "  ".join(f"{k}:{100 * n / total:.1f}%" for k, n in top))  # fmt: skip
        for control, hist in self.actions.items():
            total = sum(hist.values()) or 1
            lines.append(f"actions   {control}:" if len(self.actions) > 1 else "actions")
            width = max((len(k) for k in hist), default=4)
            for label, n in hist.items():
                bar = "#" * round(40 * n / total)
                lines.append(f"  {label:<{width}} {n:>9,} {100 * n / total:5.1f}%  {bar}")
        bad = self.corrupt
        lines.append(
            f"shards    {len(self.checks) - len(bad)} valid, {len(bad)} corrupt"
            + ("" if self.frames_checked else " (frames not decoded)")
        )
        for c in bad:
            lines.append(f"  CORRUPT {c.uri}: {c.problem}")
        if self.leftovers:
            lines.append(
                f"  {len(self.leftovers)} temporary file(s) of an interrupted writer (ignored by readers):"
            )
            lines += [f"    {u}" for u in self.leftovers[:10]]
        if self.contact_sheet:
            lines.append(f"sample    {self.contact_sheet}")
        return "\n".join(lines)


def _shard_seed(ref: ShardRef, seed: int) -> int:
    return int.from_bytes(hashlib.sha1(f"{seed}:{ref.writer}:{ref.seq}".encode()).digest()[:8], "little")


def inspect_dataset(
    uri: str, frames: bool = True, sample: int = 0, out: str | None = None, seed: int = 0, threads: int = 4
) -> InspectReport:
    """Scan every shard once: validate it, gather statistics, and draw `sample` frames at random."""
    ds = ReplayDataset(uri)
    info = ds.info
    report = InspectReport(ds.uri, info.to_json(), leftovers=ds.leftovers, frames_checked=frames)
    with storage_errors(ds.uri):
        sessions = ds.loc.fs.get_file_info(
            pafs.FileSelector(ds.loc.join("sessions").path, allow_not_found=True)
        )
    report.sessions = sum(1 for s in sessions if s.base_name.endswith(".json"))
    labels = [c.labels or tuple(str(i) for i in range(c.n)) for c in info.actions]
    need_obs = frames or sample > 0

    def scan(ref: ShardRef) -> tuple[ShardCheck, pa.Table | None, list[_Sample]]:
        try:
            table = ds.read_shard(ref, exclude=() if need_obs else ("obs",))
        except CorruptShardError as e:
            return ShardCheck(ref.uri, False, e.problem, bytes=ref.size), None, []
        problem = ds.check_rows(table, frames)
        eps = list(dict.fromkeys(table.column("episode_id").to_pylist()))
        check = ShardCheck(ref.uri, not problem, problem, table.num_rows, ref.size, eps)
        picks: list[_Sample] = []
        if sample and not problem and table.num_rows:
            keys = np.random.default_rng(_shard_seed(ref, seed)).random(table.num_rows)
            idx = np.argsort(keys)[:sample]
            sub = table.take(pa.array(idx))
            imgs = decode_frames(sub.column("obs"), info.observation)
            a0 = sub.column(info.action_columns[0]).to_pylist() if info.actions else [None] * len(idx)
            for j, i in enumerate(idx):
                act = "-" if a0[j] is None else labels[0][a0[j]] if a0[j] < len(labels[0]) else str(a0[j])
                picks.append(_Sample(float(keys[i]), sub.column("episode_id")[j].as_py(), sub.column("step")[j].as_py(),
                                     act, sub.column("reward")[j].as_py(), imgs[j]))  # fmt: skip
        light = table.drop_columns(["obs"]) if "obs" in table.column_names else table
        return check, light, picks

    ep_score: dict[str, float] = defaultdict(float)
    ep_len: dict[str, int] = defaultdict(int)
    ended: set[str] = set()
    hists = [Counter() for _ in info.actions]
    latent: Counter = Counter()
    heap: list[_Sample] = []
    with cf.ThreadPoolExecutor(max(1, threads)) as pool:  # pyarrow reads and decodes outside the GIL
        for check, table, picks in pool.map(scan, ds.shards):
            report.checks.append(check)
            for p in picks:
                if len(heap) < sample:
                    heapq.heappush(heap, p)
                elif p.key < heap[0].key:
                    heapq.heapreplace(heap, p)
            if table is None:
                continue
            if not report.columns:
                report.columns = {f.name: str(f.type) for f in table.schema} | (
                    {"obs": "binary"} if "obs" not in table.column_names else {}
                )
            ep = table.column("episode_id").to_numpy(zero_copy_only=False)
            rew = table.column("reward").to_numpy().astype(np.float64)
            done = table.column("terminated").to_numpy(zero_copy_only=False) | table.column(
                "truncated"
            ).to_numpy(zero_copy_only=False)
            uniq, inv = np.unique(ep, return_inverse=True)
            sums = np.bincount(inv, weights=rew)
            counts = np.bincount(inv)
            for k, e in enumerate(uniq):
                ep_score[e] += float(sums[k])
                ep_len[e] += int(counts[k])
            ended.update(ep[done].tolist())
            for h, col in zip(hists, info.action_columns):
                h.update(table.column(col).to_numpy().tolist())
            if "latent_action" in table.column_names:
                latent.update(table.column("latent_action").drop_null().to_numpy().tolist())
            report.steps += table.num_rows
    report.episode_scores = dict(ep_score)
    report.episode_lengths = dict(ep_len)
    report.complete = len(ended)
    for c, lab, h in zip(info.actions, labels, hists):
        report.actions[c.name] = {lab[i] if i < len(lab) else str(i): int(h.get(i, 0)) for i in range(c.n)}
    if latent:
        report.latent_actions = {str(k): int(n) for k, n in latent.most_common()}
    if sample and heap:
        picks = sorted(heap, key=lambda p: (p.episode, p.step))
        report.contact_sheet = contact_sheet(picks, resolve(out or ds.loc.join("contact_sheet.png").uri))
    return report


def contact_sheet(samples: list[Any], target: Location) -> str:
    """Tile sampled frames with a caption each (episode, step, action, reward) into one PNG."""
    n = len(samples)
    cols = max(1, math.ceil(math.sqrt(n * 4 / 3)))
    rows = math.ceil(n / cols)
    h, w = samples[0].frame.shape[:2]
    scale = 2.0 if max(h, w) <= 256 else 320 / max(h, w)
    th, tw = int(h * scale), int(w * scale)
    cap = 28
    sheet = np.full((rows * (th + cap), cols * tw, 3), 24, np.uint8)
    for k, s in enumerate(samples):
        r, c = divmod(k, cols)
        img = s.frame
        if img.ndim == 2 or img.shape[-1] == 1:
            img = cv2.cvtColor(img.reshape(h, w), cv2.COLOR_GRAY2RGB)
        img = cv2.resize(img, (tw, th), interpolation=cv2.INTER_NEAREST)
        y = r * (th + cap)
        sheet[y + cap : y + cap + th, c * tw : (c + 1) * tw] = img
        ep = s.episode.rsplit("-", 2)[-2:] if "-" in s.episode else [s.episode]
        cv2.putText(
            sheet,
            "-".join(ep),
            (c * tw + 3, y + 11),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.35,
            (220, 220, 220),
            1,
            cv2.LINE_AA,
        )
        cv2.putText(
            sheet,
            f"t={s.step} {s.action} r={s.reward:g}",
            (c * tw + 3, y + 24),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.35,
            (255, 210, 90),
            1,
            cv2.LINE_AA,
        )
    _, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    write_bytes_atomic(target, png.tobytes())
    return target.uri
