"""`rayapp sweep`: Ray Tune over BC or DQN hyperparameters.

Ray Train V2 is the default in Ray 2.60: a Tune trial is a function that builds and fits the
`TorchTrainer` itself (here: `rayapp.train.bc.pretrain`, with Tune's report callback), or runs the
DQN fine-tuning and reports each greedy evaluation. ASHA stops weak trials early.

    rayapp sweep --config configs/sweep-bc.yaml
    rayapp sweep --config configs/smoke.yaml --set 'sweep.space={pretrain.lr: {loguniform: [1.0e-4, 3.0e-3]}}'

`<run.dir>/sweep/` holds Tune's experiment (one folder per trial, named by trial id, with
TensorBoard events, progress.csv and result.json), `runs/<trial id>/` each trial's own rayapp run
folder, and `best.json` + `best_config.yaml` for the best trial. Rerunning the same command resumes
an interrupted sweep (`Tuner.restore`); a trial that crashes is reported and the others go on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from rayapp.config import (
    Config,
    absolute,
    absolute_paths,
    config_from_dict,
    config_to_dict,
    dump_config,
    path_keys,
    set_key,
)
from rayapp.errors import ConfigError, RayappError
from rayapp.runtime import init_ray
from rayapp.storage import resolve, write_bytes_atomic

__all__ = ["SweepResult", "sweep", "search_space", "absolute_paths", "trial_resources", "best_result"]


def _domain(key: str, spec: Any):
    from ray import tune

    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(
            f"sweep.space.{key}: expected one of {{loguniform|uniform|randint: [lo, hi]}} or {{choice|grid: [...]}}, got {spec!r}"
        )
    ((kind, arg),) = spec.items()
    try:
        if kind in ("loguniform", "uniform", "randint"):
            lo, hi = (float(x) for x in arg)
            if kind == "randint":
                return tune.randint(int(lo), int(hi) + 1)
            return tune.loguniform(lo, hi) if kind == "loguniform" else tune.uniform(lo, hi)
        if kind in ("choice", "grid"):
            values = list(arg)
            return tune.choice(values) if kind == "choice" else tune.grid_search(values)
    except (TypeError, ValueError):
        raise ConfigError(f"sweep.space.{key}: bad bounds {arg!r} for {kind}") from None
    raise ConfigError(
        f"sweep.space.{key}: unknown kind {kind!r} (loguniform, uniform, randint, choice, grid)"
    )


def _examples(spec: dict) -> list[Any]:
    ((kind, arg),) = spec.items()
    return list(arg) if kind in ("choice", "grid") else [arg[0], arg[1]]


def search_space(cfg: Config) -> dict[str, Any]:
    """Tune domains for `sweep.space`; every key and value is checked against the config first.
    The values of path-valued keys are made absolute, as the base config's are."""
    if not cfg.sweep.space:
        raise ConfigError(
            "sweep.space is empty: give at least one key to search, e.g. {pretrain.lr: {loguniform: [1.0e-4, 3.0e-3]}}"
        )
    space = {}
    paths = path_keys()
    for key, spec in cfg.sweep.space.items():
        if key in paths and isinstance(spec, dict) and len(spec) == 1:
            ((kind, arg),) = spec.items()
            if kind in ("choice", "grid") and isinstance(arg, list):
                spec = {kind: [absolute(v, paths[key]) for v in arg]}
        domain = _domain(key, spec)
        for example in _examples(spec):
            probe = config_from_dict(config_to_dict(cfg))
            set_key(probe, key, str(example), source=f"sweep.space.{key}")
        space[key] = domain
    return space


def apply(base: dict[str, Any], overrides: dict[str, Any], source: str) -> Config:
    cfg = config_from_dict(base)
    for key, value in overrides.items():
        set_key(cfg, key, value if isinstance(value, str) else json.dumps(value), source=source)
    cfg.validate()
    return cfg


def _trial(overrides: dict[str, Any], base: dict[str, Any], stage: str, runs_dir: str) -> None:
    """One Tune trial: the stage on the base config with this trial's overrides."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    cfg = apply(base, overrides, f"trial {trial_id}")
    cfg.run.dir = f"{runs_dir}/{trial_id}"
    if stage == "pretrain":
        from ray.tune.integration.ray_train import TuneReportCallback

        from rayapp.train.bc import pretrain

        pretrain(cfg, callbacks=[TuneReportCallback()])
    else:
        from rayapp.rl.finetune import finetune

        finetune(cfg, on_eval=lambda point: tune.report(_eval_metrics(point)))


def _eval_metrics(point: dict[str, Any]) -> dict[str, Any]:
    """What a finetune trial reports at each evaluation point (ASHA's rungs are in env steps)."""
    return {
        "charts/eval_score": point["mean"],
        "charts/eval_score_std": point["std"],
        "env_steps": point["env_steps"],
        "updates": point["updates"],
        "phase": point["phase"],
    }


SHARED_PHASES = ("bc",)  # a finetune trial's first point: the BC it starts from, the same in every trial


def best_result(results, metric: str, mode: str, scope: str = "all") -> tuple[Any, float] | None:
    """The best trial and value over every point each trial reported (Tune's scope="all"), or
    over each trial's last point ("last"), leaving out the points of `SHARED_PHASES`: a finetune
    trial first evaluates the BC policy it starts from, which no hyperparameter of the trial
    produced; ranked with it, a sweep whose trials all fall below BC names an arbitrary trial best
    at BC's score."""
    best: tuple[Any, float] | None = None
    for r in results:
        df = r.metrics_dataframe
        if r.error is not None or df is None or metric not in df:
            continue
        if "phase" in df:
            df = df[~df["phase"].isin(SHARED_PHASES)]
        values = [float(v) for v in df[metric] if v is not None and math.isfinite(float(v))]
        if not values:
            continue
        if scope == "last":
            values = values[-1:]
        v = max(values) if mode == "max" else min(values)
        if best is None or (v > best[1] if mode == "max" else v < best[1]):
            best = (r, v)
    return best


def trial_resources(cfg: Config):
    """What one trial reserves. A pretrain trial's process only drives its `TorchTrainer`, whose
    workers reserve their own CPUs and GPUs. A finetune trial reserves a placement group holding
    everything its run starts (Ray places a trial's actors and tasks inside it): its own process,
    the learner actor (with its GPU when `finetune.use_gpu`), env runners and evaluation tasks."""
    from ray import tune

    sw = cfg.sweep
    if sw.stage == "pretrain":
        return {"cpu": sw.trial_cpus, **({"gpu": sw.trial_gpus} if sw.trial_gpus else {})}
    from rayapp.rl.dqn_config import resource_bundles

    return tune.PlacementGroupFactory(resource_bundles(cfg, sw.trial_cpus), strategy="PACK")


@dataclass
class SweepResult:
    best: dict[str, Any]
    trials: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def text(self) -> str:
        b = self.best
        lines = [f"best trial {b.get('trial_id')}: {b.get('metric')} = {b.get('value')}", f"  overrides: {b.get('overrides')}",
                 f"  checkpoint: {b.get('checkpoint')}", f"  run folder: {b.get('run_dir')}"]  # fmt: skip
        lines += [f"  {t['trial_id']}: {t['status']} {t.get('value')}  {t['overrides']}" for t in self.trials]
        lines += [f"  FAILED {e}" for e in self.errors]
        return "\n".join(lines)


def _check_validation_split(cfg: Config, metric: str) -> None:
    """Trials rank by a validation metric: fail before Ray when the dataset has no validation split
    (Tune would otherwise stop the whole sweep at the first result that lacks the metric)."""
    from rayapp.data.index import DatasetIndex
    from rayapp.replay import ReplayDataset

    d = cfg.data
    index = DatasetIndex.build(
        ReplayDataset(cfg.data_uri),
        d.label,
        d.val_fraction,
        d.test_fraction,
        d.split_seed,
        d.max_corrupt_shards,
    )
    if not index.episodes("val"):
        raise ConfigError(
            f"sweep.metric={metric} needs a validation split, but none of the {len(index.episode_split)} "
            f"episodes of {cfg.data_uri} falls in it (data.val_fraction={d.val_fraction}): record more "
            "episodes or raise data.val_fraction"
        )
    if not index.episodes("train"):
        raise ConfigError(
            f"sweep: none of the {len(index.episode_split)} episodes of {cfg.data_uri} falls in the training "
            f"split (data.val_fraction={d.val_fraction}, data.test_fraction={d.test_fraction}): record more episodes"
        )


def _check_trial_fits(cfg: Config) -> None:
    """A finetune trial's placement group must fit the cluster, or Tune waits for it forever."""
    import ray

    from rayapp.rl.dqn_config import learner_placement, resource_bundles

    need: dict[str, float] = {}
    for bundle in resource_bundles(cfg, cfg.sweep.trial_cpus):
        for k, v in bundle.items():
            need[k] = need.get(k, 0.0) + v
    have = ray.cluster_resources()
    short = {k: v for k, v in need.items() if v > have.get(k, 0.0) + 1e-9}
    if short:
        f, e = cfg.finetune, cfg.eval
        parts = (f"its process {cfg.sweep.trial_cpus} CPU, {learner_placement(f)[0]} learner actor(s), "
                 f"{f.num_env_runners} env runner(s) x {f.cpus_per_env_runner} CPU, evaluation tasks of {e.cpus_per_worker} CPU")  # fmt: skip
        raise ConfigError(
            f"a finetune trial reserves {', '.join(f'{v:g} {k}' for k, v in need.items() if v)} ({parts}) but this Ray "
            f"cluster has {', '.join(f'{have.get(k, 0.0):g} {k}' for k in short)}: lower sweep.trial_cpus, "
            "finetune.num_env_runners, finetune.cpus_per_env_runner or eval.workers"
        )


def sweep(cfg: Config) -> SweepResult:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    sw = cfg.sweep
    space = search_space(cfg)  # bad keys and values fail here, before Ray
    metric = sw.metric or ("val/balanced_accuracy" if sw.stage == "pretrain" else "charts/eval_score")
    if sw.stage == "finetune" and sw.trial_gpus:
        raise ConfigError(
            f"sweep.trial_gpus={sw.trial_gpus} would reserve a GPU for the trial's own process, where a finetune "
            "trial does no GPU work: set finetune.use_gpu=true instead (its learner actor asks for the GPU) and sweep.trial_gpus=0"
        )
    # trials run in other processes and folders: paths must not depend on the working directory
    base_cfg = absolute_paths(cfg)
    base_cfg.data.uri = base_cfg.data_uri
    run = resolve(base_cfg.run.dir)
    base = config_to_dict(base_cfg)
    runs_dir = run.join("sweep", "runs").uri
    from rayapp.runs import save_resolved_config

    if sw.stage == "pretrain" and metric.startswith("val/"):
        _check_validation_split(cfg, metric)
    save_resolved_config(cfg, "sweep")
    init_ray(cfg.ray)
    if sw.stage == "finetune":
        _check_trial_fits(base_cfg)
    if sw.stage == "pretrain":
        resources: Any = trial_resources(base_cfg)
    else:  # a finetune trial's resources follow its own config (the space may change env runners, ...)

        def resources(overrides: dict[str, Any]):
            return trial_resources(apply(base, overrides, "sweep.space"))

    trainable = tune.with_resources(
        tune.with_parameters(_trial, base=base, stage=sw.stage, runs_dir=runs_dir), resources
    )
    time_attr = "epoch" if sw.stage == "pretrain" else "env_steps"
    max_t = cfg.pretrain.epochs if sw.stage == "pretrain" else max(1, cfg.finetune.online_steps)
    if sw.scheduler == "asha":
        grace = (
            sw.grace_period
            if sw.stage == "pretrain"
            else sw.grace_period * max(1, cfg.finetune.eval_every_steps)
        )
        scheduler = ASHAScheduler(
            time_attr=time_attr,
            max_t=max_t,
            grace_period=min(grace, max_t),
            reduction_factor=sw.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    storage = run.path if run.is_local else run.uri
    experiment = run.join("sweep")
    path = experiment.path if run.is_local else experiment.uri
    if tune.Tuner.can_restore(path):
        print(f"sweep: resuming the sweep in {experiment.uri}", flush=True)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        from ray.tune import FailureConfig, RunConfig

        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=metric,
                mode=sw.mode,
                scheduler=scheduler,
                num_samples=sw.num_samples,
                max_concurrent_trials=sw.max_concurrent,
                trial_name_creator=lambda t: t.trial_id,
                trial_dirname_creator=lambda t: t.trial_id,
            ),
            run_config=RunConfig(
                name="sweep",
                storage_path=storage,
                failure_config=FailureConfig(max_failures=sw.max_failures),
                verbose=1,
            ),
        )
    results = tuner.fit()
    out = SweepResult(best={})
    for r in results:
        tid = r.path.rstrip("/").rsplit("/", 1)[-1]
        overrides = {k: v for k, v in (r.config or {}).items() if k in cfg.sweep.space}
        value = (r.metrics or {}).get(metric)
        if r.error is not None:
            first = str(r.error).strip().splitlines()
            out.errors.append(f"{tid}: {first[-1] if first else type(r.error).__name__}")
        out.trials.append(
            {
                "trial_id": tid,
                "status": "ERROR" if r.error else "done",
                "value": value,
                "overrides": overrides,
            }
        )
    chosen = best_result(results, metric, sw.mode, sw.scope)
    if chosen is None:
        raise RayappError(
            f"no sweep trial reported {metric} ({len(out.errors)} failed: {'; '.join(out.errors)[:300]})"
        )
    best, best_value = chosen
    tid = best.path.rstrip("/").rsplit("/", 1)[-1]
    trial_run = f"{runs_dir}/{tid}"
    from rayapp.models.checkpoint import resolve_checkpoint

    try:
        ckpt = resolve_checkpoint(trial_run, stages=(sw.stage,))
    except RayappError:
        ckpt = None
    overrides = {k: v for k, v in best.config.items() if k in cfg.sweep.space}
    out.best = {
        "trial_id": tid,
        "metric": metric,
        "value": best_value,
        "overrides": overrides,
        "checkpoint": ckpt,
        "run_dir": trial_run,
    }
    write_bytes_atomic(
        experiment.join("best.json"), (json.dumps(out.best, indent=2, default=str) + "\n").encode()
    )
    best_cfg = apply(base, overrides, "best trial")
    best_cfg.run.dir = trial_run
    write_bytes_atomic(
        experiment.join("best_config.yaml"),
        dump_config(
            best_cfg, f"best trial {tid} of {experiment.uri}: {metric} = {out.best['value']}"
        ).encode(),
    )
    return out
