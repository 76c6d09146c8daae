"""The ingest pipeline from a dataset URI to Ray Datasets of training samples, one per split.

    ingest = build_ingest(cfg)                 # driver: footers + light columns, split, balance
    train = ingest.dataset("train")            # ray.data.Dataset of {"obs", "action"} samples
    for batch in torch_batches(train.iterator(), cfg.data, batch_size=256, train=True): ...

Inside a Ray Train worker, `ray.train.get_dataset_shard("train")` takes the place of the iterator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rayapp.config import Config, DataConfig
from rayapp.data.datasource import make_datasource, plan_tasks, sample_bytes
from rayapp.data.index import SPLITS, DatasetIndex
from rayapp.data.samples import ReadSpec
from rayapp.errors import RayappError
from rayapp.frames import FrameSpec, Preprocessor
from rayapp.replay.reader import ReplayDataset
from rayapp.replay.schema import ActionControl

__all__ = [
    "Ingest",
    "build_ingest",
    "balance_factors",
    "torch_batches",
    "configure_data_context",
    "train_data_config",
    "build_pair_ingest",
]


def balance_factors(counts: np.ndarray, power: float, cap: float) -> np.ndarray:
    """Per-class factors f_c so that class c's share becomes proportional to p_c^(1-power).

    Used as expected copies per step (resampling) or as loss weights; normalised so that
    sum_c p_c f_c = 1 (an epoch keeps its length, the mean weight stays 1), no factor above `cap`.
    """
    counts = np.asarray(counts, np.float64)
    total = counts.sum()
    f = np.zeros_like(counts)
    if total == 0:
        return f
    p = counts / total
    seen = p > 0
    q = np.zeros_like(p)
    q[seen] = p[seen] ** (1.0 - power)
    q /= q.sum()
    f[seen] = q[seen] / p[seen]
    capped = np.zeros_like(seen)
    for _ in range(len(f)):  # water-filling: pin capped classes, rescale the rest to keep sum p f = 1
        capped |= f >= cap
        f[capped] = cap
        free = seen & ~capped
        rest = 1.0 - (p[capped] * cap).sum()
        if not free.any() or rest <= 0:
            break
        f[free] *= rest / (p[free] * f[free]).sum()
        if not (f[free] > cap).any():
            break
    return f


def configure_data_context() -> None:
    """Ray Data settings measured to matter on small machines (see benchmarks/RESULTS.md)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    # With reservation on, a 2-CPU node runs about one read task at a time beside training workers.
    ctx.op_resource_reservation_enabled = False
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def train_data_config(data_cfg: DataConfig):
    """Ray Train's DataConfig for the ingest: the object store budget (`data.object_store_mb`)
    caps the blocks in flight, so memory does not grow with the dataset."""
    from ray.data import ExecutionOptions, ExecutionResources
    from ray.train import DataConfig as TrainDataConfig

    opts = ExecutionOptions()
    if data_cfg.object_store_mb:
        opts.resource_limits = ExecutionResources(object_store_memory=data_cfg.object_store_mb * 2**20)
    return TrainDataConfig(datasets_to_split="all", execution_options=opts)


@dataclass
class Ingest:
    cfg: DataConfig
    index: DatasetIndex
    frames: FrameSpec
    controls: tuple[ActionControl, ...]
    output_columns: tuple[str, ...]
    class_weights: list[np.ndarray] | None
    rates: np.ndarray | None
    seed: int
    pairs: bool = False  # samples are (frame t, frame t+1) pairs: the latent action model's

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.frames.input_shape(self.index.info.observation.shape)

    def rows(self, split: str) -> int:
        return self.index.rows(split)

    def read_spec(self, split: str | None, train: bool, include_ids: bool = False) -> ReadSpec:
        info = self.index.info
        return ReadSpec(
            filesystem=self.index.ds.loc.fs,
            obs=info.observation,
            frames=self.frames,
            label_columns=tuple(self.index.label_columns),
            output_columns=self.output_columns,
            episode_split=self.index.episode_split,
            split=split,
            clip_length=self.cfg.clip_length,
            rates=self.rates if train else None,
            shuffle=train and self.cfg.shuffle_blocks,
            seed=self.seed,
            include_ids=include_ids,
            pairs=self.pairs,
            uri_prefix="" if self.index.ds.loc.is_local else f"{self.index.ds.loc.scheme}://",
        )

    def tasks(self, split: str | None):
        # clips need one row of context even without stacking, to tell a task boundary from an episode start
        context = max(self.frames.frame_stack - 1, 1 if self.cfg.clip_length else 0)
        return plan_tasks(self.index, split, self.cfg.rows_per_task, context, self.cfg.clip_length)

    def dataset(self, split: str | None, train: bool | None = None, include_ids: bool = False):
        """A ray.data.Dataset of samples of `split` (None: all episodes). `train` turns on the
        block shuffle and the resampling; it defaults to split == 'train'."""
        import ray

        train = (split == "train") if train is None else train
        tasks = self.tasks(split)
        if not tasks:
            raise RayappError(
                f"no {split or ''} episodes in {self.index.ds.uri} (split sizes: {self.split_sizes()})"
            )
        source = make_datasource(
            self.read_spec(split, train, include_ids),
            tasks,
            sample_bytes(self.frames, self.index.info.observation.shape, self.cfg.clip_length),
        )
        return ray.data.read_datasource(source, num_cpus=self.cfg.read_cpus, override_num_blocks=len(tasks))

    def mean_frame(self, split: str = "train", max_frames: int = 10000) -> tuple[np.ndarray, int]:
        """The per-pixel mean of the network's input over the first `max_frames` frames of
        `split`'s episodes in recording order: (input_shape float32 in [0, 1], frames used). Each
        stacked slot gets the same single-frame mean."""
        keep = set(self.index.episodes(split))
        pre = Preprocessor(self.frames, self.index.info.observation.shape)
        total, n = None, 0
        for ep in self.index.ds.iter_episodes(max_corrupt_shards=self.cfg.max_corrupt_shards, extras=()):
            if ep.episode_id not in keep:
                continue
            x = pre(ep.obs[: max_frames - n]).astype(np.float64).sum(0)
            total = x if total is None else total + x
            n += min(len(ep.obs), max_frames - n)
            if n >= max_frames:
                break
        if n == 0:
            raise RayappError(f"no {split} frames in {self.index.ds.uri} to compute model.center's mean frame from")
        one = (total / n / 255.0).astype(np.float32)
        return np.tile(one, (self.frames.frame_stack, 1, 1)), n

    def split_sizes(self) -> dict[str, dict[str, int]]:
        return {s: {"episodes": len(self.index.episodes(s)), "steps": self.index.rows(s)} for s in SPLITS}

    def summary(self) -> dict[str, Any]:
        counts = {}
        if self.controls:
            labels = self.controls[0].labels or tuple(str(i) for i in range(self.controls[0].n))
            counts = {labels[i]: int(c) for i, c in enumerate(self.index.label_counts["train"][0])}
        return {
            "dataset": self.index.ds.uri,
            "input_shape": list(self.input_shape),
            "splits": self.split_sizes(),
            "train_action_counts": counts,
            "balance": self.cfg.balance,
            "class_weights": None
            if self.class_weights is None
            else [w.round(4).tolist() for w in self.class_weights],
            "resample_rates": None if self.rates is None else self.rates.round(4).tolist(),
            "corrupt_shards_skipped": [{"uri": c.uri, "problem": c.problem} for c in self.index.skipped],
        }


def build_ingest(cfg: Config, dataset: ReplayDataset | None = None) -> Ingest:
    d = cfg.data
    ds = dataset or ReplayDataset(cfg.data_uri)
    index = DatasetIndex.build(
        ds, d.label, d.val_fraction, d.test_fraction, d.split_seed, d.max_corrupt_shards,
        train_fraction=d.train_fraction, train_episodes=d.train_episodes,
    )  # fmt: skip
    if index.rows("train") == 0:
        raise RayappError(f"{ds.uri} has no training steps (splits: { {s: index.rows(s) for s in SPLITS} })")
    frames = FrameSpec.from_config(d)
    frames.frame_shape(ds.info.observation.shape)  # a crop that leaves nothing fails here
    controls = ds.info.actions
    if d.label == "latent_action":  # BC on latent actions: one control, the LAM's vocabulary
        controls = (ActionControl("latent_action", index_vocabulary(index)),)
    outputs = output_columns(controls)
    counts = index.label_counts["train"]
    weights = rates = None
    if d.balance == "weights":
        weights = [balance_factors(c, d.balance_power, d.max_resample_rate) for c in counts]
    elif d.balance == "resample":
        rates = balance_factors(counts[0], d.balance_power, d.max_resample_rate)
    return Ingest(d, index, frames, controls, outputs, weights, rates, cfg.run.seed)


def output_columns(controls) -> tuple[str, ...]:
    """The samples' label columns: "action" for one control, "action_<control>" for several."""
    return ("action",) if len(controls) == 1 else tuple(f"action_{c.name}" for c in controls)


def index_vocabulary(index: DatasetIndex) -> int:
    return len(index.label_counts["train"][0])


def build_pair_ingest(
    cfg: Config, frames: FrameSpec, dataset: ReplayDataset | None = None, labelled: tuple[int, float] | None = None
) -> Ingest:
    """Frame pairs for the latent action model: every step with a previous step in its episode
    becomes the 2-frame stack (frame t, frame t+1); no labels (an action column, if any, is
    ignored); split by episode like the BC ingest (`data.val_fraction`, `data.test_fraction`).
    `labelled` = (episodes, fraction): pairs with their true action at t (the column "action",
    or "action_<control>" per control), the training split cut to that many or that share of its
    episodes (as `data.train_episodes`, `data.train_fraction`); an action-less dataset fails."""
    d = cfg.data
    ds = dataset or ReplayDataset(cfg.data_uri)
    label = None if labelled is None else "action"
    episodes, fraction = labelled or (0, 1.0)
    index = DatasetIndex.build(ds, label, d.val_fraction, d.test_fraction, d.split_seed, d.max_corrupt_shards,
                               train_fraction=fraction, train_episodes=episodes)  # fmt: skip
    lengths = index.episode_rows
    single = [e for e, n in lengths.items() if n < 2]
    pairs = {s: sum(lengths[e] - 1 for e in index.episodes(s) if lengths[e] > 1) for s in SPLITS}
    if pairs["train"] == 0:
        raise RayappError(
            f"{ds.uri} has no frame pairs to train on: {len(single)} of its {len(lengths)} episodes have a single "
            "frame and the training split has none longer (a pair needs two consecutive frames of one episode)"
        )
    if single:
        print(f"lam: {len(single)} single-frame episode(s) in {ds.uri} give no pairs (e.g. {single[0]})", flush=True)
    frames.frame_shape(ds.info.observation.shape)
    controls = ds.info.actions if labelled is not None else ()
    outputs = output_columns(controls) if controls else ()
    ingest = Ingest(d, index, frames, tuple(controls), outputs, None, None, cfg.run.seed, pairs=True)
    ingest.pair_counts = pairs
    return ingest


def torch_batches(
    iterable: Any,
    data_cfg: DataConfig,
    batch_size: int,
    train: bool,
    device: Any = "auto",
    seed: int | None = None,
):
    """`iter_torch_batches` with the pipeline's settings: the local shuffle buffer for training."""
    buf = data_cfg.shuffle_buffer if train and data_cfg.shuffle_buffer > 0 else None
    return iterable.iter_torch_batches(
        batch_size=batch_size,
        local_shuffle_buffer_size=buf,
        local_shuffle_seed=seed if buf else None,
        prefetch_batches=data_cfg.prefetch_batches,
        drop_last=False,
        device=device,
    )
