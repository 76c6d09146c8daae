"""`rayapp pretrain`: behaviour cloning on Ray Train, streaming replays with Ray Data.

Three parts, as in Ray Train's release benchmarks: the per-epoch loop, `train_fn_per_worker(config)`
(what each worker runs), and `pretrain(cfg)` (the driver: ingest plan, shape checks, TorchTrainer).

    rayapp pretrain --config configs/quickstart.yaml                # after `rayapp record`
    rayapp pretrain --config configs/smoke.yaml --set pretrain.num_workers=1

Checkpoints (every epoch, to `<run.dir>/pretrain/`, local or s3://) hold the weights, the model
arguments, the frame preprocessing, the game and the full config; a killed worker or driver
resumes from the latest one. `<run.dir>/pretrain/best.json` names the best by validation
balanced accuracy; `metrics.csv` and `tensorboard/` hold the curves.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from dataclasses import dataclass
from typing import Any

from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from rayapp.config import Config, config_to_dict
from rayapp.data.pipeline import build_ingest, configure_data_context, train_data_config
from rayapp.errors import RayappError, StageError, StorageError, find_error
from rayapp.models.checkpoint import check_compatible, load_policy, write_best
from rayapp.models.nets import ModelSpec
from rayapp.runs import save_resolved_config
from rayapp.runtime import init_ray, require_cpus_beside
from rayapp.signals import kept_sigint
from rayapp.storage import exists, explain, is_storage_failure, read_bytes, resolve, write_bytes_atomic
from rayapp.train.bc_loop import train_fn_per_worker
from rayapp.train.callback import ReportCallback

__all__ = ["pretrain", "PretrainResult"]


@dataclass
class PretrainResult:
    checkpoint: str  # the best checkpoint folder
    metrics: dict[str, Any]  # its metrics
    history: list[dict[str, Any]]
    summary: dict[str, Any]


def _storage(run_dir: str):
    loc = resolve(run_dir)
    if loc.is_local:
        return loc.path, None, ""
    return loc.path, loc.fs, f"{loc.scheme}://"


def _resume_point(folder) -> str:
    """Where a rerun resumes from, as far as storage still says (it may be what failed)."""
    latest = folder.join("latest.json")
    try:  # one attempt, no backoff: the error is already known
        with latest.fs.open_input_stream(latest.path) as f:
            return f"the checkpoint of epoch {json.loads(f.read())['epoch']} in {folder.uri}"
    except FileNotFoundError:
        return f"the start (no checkpoint yet in {folder.uri})"
    except (OSError, ValueError, KeyError):
        return f"its last checkpoint in {folder.uri}"


def _failure(e: BaseException, folder) -> RayappError:
    """One line for what ended `trainer.fit()`: the RayappError a worker or the controller raised
    (a storage error says what to do and where a rerun resumes), else the first error."""
    err = find_error(e, RayappError)
    if err is None:
        oserr = find_error(e, OSError)
        if oserr is not None and is_storage_failure(oserr):  # Ray's own writes into run.dir
            err = StorageError(explain(folder.uri, oserr))
    if isinstance(err, StorageError):
        return StorageError(
            f"{err}; once it is back, rerun the same command: it resumes from {_resume_point(folder)}"
        )
    if err is not None:
        return err
    cause = getattr(e, "__cause__", None) or e
    msg = " ".join(str(cause).split())[:400]
    return StageError(
        f"pretrain failed: {type(cause).__name__}: {msg}; its checkpoints stay in {folder.uri}, rerun to resume"
    )


def pretrain(cfg: Config, callbacks: list | None = None) -> PretrainResult:
    p = cfg.pretrain
    init_ray(cfg.ray)
    configure_data_context()
    ingest = build_ingest(cfg)  # dataset problems (missing, corrupt, empty) surface before training
    info = ingest.index.info
    spec = ModelSpec(
        ingest.input_shape,
        tuple((c.name, c.n) for c in ingest.controls),
        cfg.model.arch,
        cfg.model.hidden,
        cfg.model.lstm_hidden,
        center=cfg.model.center,
    )
    game = {"game": info.game, "env_id": info.env_id, "obs_shape": list(info.observation.shape),
            "actions": [list(c.labels) for c in ingest.controls], "frame_rate": info.frame_rate, "dataset": info.dataset_id}  # fmt: skip
    init = ""
    if cfg.model.init_checkpoint:
        pol = load_policy(cfg.model.init_checkpoint)
        other = pol.spec
        if cfg.model.init_mode == "trunk":  # new heads for this dataset's labels; the rest must match
            other = dataclasses.replace(other, controls=spec.controls)
        spec = dataclasses.replace(spec, center=other.center)  # its weights hold its own mean frame (or none)
        check_compatible(
            spec,
            info.game,
            other,
            pol.game.get("game", "?"),
            f"model.init_checkpoint {pol.path}",
            ingest.index.ds.uri,
        )
        init = pol.path
    folder = resolve(cfg.run.dir).join("pretrain")
    latest = folder.join("latest.json")
    if exists(latest):  # a run folder trained before: resuming it must not mix shapes
        prev = json.loads(read_bytes(latest))
        check_compatible(
            spec,
            info.game,
            ModelSpec.from_json(prev["spec"]),
            info.game,
            f"the earlier training in {folder.uri}",
            ingest.index.ds.uri,
        )
        if prev["epoch"] >= p.epochs:
            raise RayappError(
                f"{folder.uri} already trained {prev['epoch']} epochs (pretrain.epochs={p.epochs}); raise pretrain.epochs to continue, or use another run.dir"
            )
        print(f"pretrain: resuming {folder.uri} after epoch {prev['epoch']} of {p.epochs}", flush=True)
    input_mean = None
    if spec.center and not init:  # the same frames every time: a resumed run gets the mean its checkpoint holds
        input_mean, n = ingest.mean_frame("train", cfg.model.center_frames)
        print(f"pretrain: inputs centred on the mean frame of {n:,} training frames (model.center)", flush=True)
    save_resolved_config(cfg, "pretrain")
    has_val = ingest.rows("val") > 0
    datasets = {"train": ingest.dataset("train")}
    if has_val:
        datasets["val"] = ingest.dataset("val")
    score = "val/balanced_accuracy" if has_val else "train/balanced_accuracy"
    labels = list(ingest.controls[0].labels) or [str(i) for i in range(ingest.controls[0].n)]
    summary = ingest.summary()
    loop_config = {
        "cfg": config_to_dict(cfg),
        "spec": spec.to_json(),
        "frames": ingest.frames.to_json(),
        "output_columns": list(ingest.output_columns),
        "labels": labels,
        "class_weights": None if ingest.class_weights is None else [w.tolist() for w in ingest.class_weights],
        "has_val": has_val,
        "game": game,
        "init_checkpoint": init,
        "input_mean": input_mean,
        "corrupt_shards_skipped": len(ingest.index.skipped),
    }
    resources = {"CPU": p.cpus_per_worker}
    if p.use_gpu:
        resources["GPU"] = p.gpus_per_worker
    require_cpus_beside(p.num_workers, p.cpus_per_worker, cfg.data.read_cpus, "pretrain.cpus_per_worker")
    storage_path, storage_fs, scheme = _storage(cfg.run.dir)
    print(f"pretrain: {spec.describe()}; {summary['splits']['train']['steps']:,} training steps in "
          f"{summary['splits']['train']['episodes']} episodes, {p.epochs} epochs on {p.num_workers} worker(s)", flush=True)  # fmt: skip
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=p.num_workers, use_gpu=p.use_gpu, resources_per_worker=resources
        ),
        datasets=datasets,
        dataset_config=train_data_config(cfg.data),
        run_config=RunConfig(
            name="pretrain",
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=p.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=p.checkpoints_to_keep,
                checkpoint_score_attribute=score,
                checkpoint_score_order="max",
            ),
            callbacks=[ReportCallback(folder.uri, p.epochs, spec.to_json()), *(callbacks or [])],
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    try:
        with kept_sigint():  # fit() leaves Ray Train's own Ctrl+C handler installed
            result = trainer.fit()
    except Exception as e:  # noqa: BLE001 - Ray wraps worker errors in its own types
        raise _failure(e, folder) from e
    best = result.get_best_checkpoint(score, "max") or result.checkpoint
    if best is None:
        raise StageError(f"pretrain produced no checkpoint in {folder.uri}")
    best_uri = scheme + best.path
    best_metrics = next((m for c, m in result.best_checkpoints if c.path == best.path), result.metrics)
    history = []
    metrics_csv = folder.join("metrics.csv")
    if exists(metrics_csv):
        history = list(csv.DictReader(io.StringIO(read_bytes(metrics_csv).decode())))
    write_best(cfg.run.dir, "pretrain", best_uri, best_metrics)
    write_bytes_atomic(folder.join("ingest.json"), (json.dumps(summary, indent=2) + "\n").encode())
    return PretrainResult(best_uri, best_metrics, history, summary)
