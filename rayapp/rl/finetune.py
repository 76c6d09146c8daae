"""`rayapp finetune`: RLlib DQN that starts from the BC network, learns offline from the recorded
transitions, then online (DQfD recipe: TD + large-margin loss, demonstrations kept for the run).

    rayapp finetune --config configs/quickstart.yaml          # after `rayapp pretrain`
    rayapp finetune --config configs/smoke.yaml --set finetune.online_steps=2000

Writes to `<run.dir>/finetune/`: `metrics.csv` and `tensorboard/` (episode score, greedy eval
score, TD loss, margin loss, Q-values, epsilon, env steps/s, learner updates/s), `rllib/<step>/`
(the algorithm's checkpoints with its replay buffer: rerunning resumes from the newest complete one,
see rayapp.rl.checkpoints), `policies/<step>/` (exported policies that `rayapp evaluate` and the
player load), `latest.json` (the newest of them) and `best.json` (the best greedy evaluation, on
seeds disjoint from those `rayapp evaluate` plays: `rayapp.rl.selection`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rayapp.config import Config
from rayapp.envs.atari import action_controls, game_name, make_atari_env
from rayapp.envs.episodes import play_episodes
from rayapp.envs.seeds import episode_seeds
from rayapp.errors import RayappError
from rayapp.frames import FrameSpec
from rayapp.metrics import MetricsLogger
from rayapp.models.checkpoint import check_compatible
from rayapp.models.nets import ModelSpec
from rayapp.progress import Progress
from rayapp.replay.reader import ReplayDataset
from rayapp.rl import checkpoints as ckpt
from rayapp.rl.dqn_config import build_algorithm, eval_tasks, runner_resources, uses_demos
from rayapp.rl.init_q import calibrated_bc_state
from rayapp.rl.offline import DemoStats, demo_episodes
from rayapp.rl.runners import RunnerWatch
from rayapp.rl.selection import BestPolicy
from rayapp.rl.weights import export_policy, init_policy, load_into, module_state, q_spec
from rayapp.runs import save_resolved_config
from rayapp.runtime import init_ray, require_resources
from rayapp.storage import exists, read_bytes, resolve, write_bytes_atomic

# the weight helpers live in rayapp.rl.weights; named here too, where tests and benchmarks import them
__all__ = ["FinetuneResult", "finetune", "build_algorithm", "export_policy", "evaluate_greedy", "init_policy",
           "load_into", "module_state", "q_spec"]  # fmt: skip


@dataclass
class FinetuneResult:
    policy: str  # the best exported policy (by greedy evaluation)
    final_policy: str
    curve: list[dict[str, Any]] = field(default_factory=list)  # env_steps, phase, mean, std, scores
    history: list[dict[str, Any]] = field(default_factory=list)
    demo: dict[str, Any] = field(default_factory=dict)


def evaluate_greedy(
    policy: str, frames: FrameSpec, cfg: Config, episodes: int, purpose: str = "selection"
) -> list[dict[str, Any]]:
    """Greedy episodes (seed, raw unclipped score, steps, ...) of an exported policy on the seeds
    of `purpose` (`rayapp.envs.seeds`: fine-tuning selects on "selection"), played in Ray tasks."""

    import ray

    env_cfg = dict(dataclasses.asdict(cfg.env), max_episode_steps=cfg.eval.max_episode_steps)
    seeds = episode_seeds(cfg.run.seed, purpose, episodes)
    chunks = eval_tasks(cfg, episodes)
    remote = ray.remote(num_cpus=cfg.eval.cpus_per_worker)(play_episodes)
    refs = [
        remote.remote(
            "policy", "greedy", seeds[c::chunks], env_cfg, policy, frames.to_json(), cfg.eval.epsilon, 0
        )
        for c in range(chunks)
    ]
    return sorted((e for part in ray.get(refs) for e in part), key=lambda e: e["seed"])


def _value(result: dict, *path: str, default: Any = None) -> Any:
    for p in path:
        if not isinstance(result, dict) or p not in result:
            return default
        result = result[p]
    return result


def finetune(cfg: Config, on_eval: Callable[[dict[str, Any]], None] | None = None) -> FinetuneResult:
    """Offline, then online DQfD from the BC policy; `on_eval(point)` is called with every point
    of the learning curve (env_steps, phase, mean, std, scores, policy) as it is measured."""

    f = cfg.finetune
    folder = resolve(cfg.run.dir).join("finetune")
    pol = init_policy(cfg)
    probe = make_atari_env(cfg.env)
    controls = action_controls(probe)
    obs_shape = probe.observation_space.shape
    probe.close()
    if len(controls) != 1:
        raise RayappError("DQN fine-tuning needs one discrete control")
    if pol is not None:
        frames, spec = pol.frames, q_spec(cfg, pol.spec)
        env_spec = ModelSpec(
            frames.input_shape(obs_shape),
            ((controls[0].name, controls[0].n),),
            spec.arch,
            spec.hidden,
            spec.lstm_hidden,
        )
        check_compatible(
            env_spec,
            game_name(cfg.env.game),
            spec,
            pol.game.get("game", "?"),
            f"the BC checkpoint {pol.path}",
            f"env.game={cfg.env.game}",
        )
    else:
        frames = FrameSpec.from_config(cfg.data)
        spec = ModelSpec(
            frames.input_shape(obs_shape), ((controls[0].name, controls[0].n),), "cnn", cfg.model.hidden
        )
    game = {
        "game": game_name(cfg.env.game),
        "env_id": cfg.env.game,
        "obs_shape": list(obs_shape),
        "actions": [list(controls[0].labels)],
        "frame_rate": 60.0 / cfg.env.frameskip,
    }
    demo_stats = DemoStats()
    demos, first_demo = iter(()), None
    if uses_demos(f):  # dataset problems surface before Ray work starts
        info = ReplayDataset(cfg.data_uri).info
        data_spec = ModelSpec(
            frames.input_shape(tuple(info.observation.shape)),
            tuple((c.name, c.n) for c in info.actions),
            spec.arch,
            spec.hidden,
            spec.lstm_hidden,
        )
        check_compatible(data_spec, info.game, spec, game["game"], "the fine-tuned network", cfg.data_uri)
        if f.life_loss_terminal and "lives" not in info.extras:
            raise RayappError(f"finetune.life_loss_terminal needs the demonstrations' lives: {cfg.data_uri} has no 'lives' column")
        d = cfg.data
        demos = demo_episodes(cfg.data_uri, frames, "train", f.clip_rewards, d.split_seed, d.val_fraction,
                              d.test_fraction, d.max_corrupt_shards, stats=demo_stats)  # fmt: skip
        first_demo = next(demos, None)
        if first_demo is None:
            raise RayappError(f"no training episodes in {cfg.data_uri} to learn from")
    save_resolved_config(cfg, "finetune")
    init_ray(cfg.ray)
    require_resources(runner_resources(cfg), "finetune.env_runner_resources", f.num_env_runners, "env runners")
    algo = build_algorithm(cfg, spec, frames)
    if first_demo is not None:  # before the restore, which brings back their priorities
        try:
            add_demos(algo, first_demo, demos, cfg, demo_stats)
        except BaseException:
            algo.stop()  # its env runners and learner are actors: nothing may outlive a refusal
            raise
    rllib_dir = ckpt.checkpoint_root(cfg.run.dir)
    resumed = ckpt.restore_latest(algo, rllib_dir)
    calibration: dict[str, Any] = {}
    if not resumed and pol is not None:
        state = pol.state_dict
        if algo.demo_steps and (f.init_action_gap > 0 or f.init_value_from_returns):
            state, calibration = calibrated_bc_state(algo, pol, f, frames.frame_stack, seed=cfg.run.seed)
            print(f"finetune: Q-values calibrated on {calibration['states']:,} demonstration states: BC's action gap "
                  f"{calibration['bc_action_gap']:.2f} x {calibration['head_scale']:.3f}, value {calibration['value_bias']:.2f}", flush=True)  # fmt: skip
        load_into(algo, state)
    saved_at = resumed.env_steps if resumed else None
    logger = MetricsLogger(folder.uri, resume_step=saved_at)
    result = FinetuneResult(
        "",
        "",
        demo={
            "episodes": demo_stats.episodes,
            "transitions": demo_stats.transitions,
            "score_mean": float(np.mean(demo_stats.score)) if demo_stats.score else None,
            **({"calibration": calibration} if calibration else {}),
        },
    )
    curve_file = folder.join("curve.json")
    result.curve = ckpt.resumed_curve(curve_file, resumed)
    best = BestPolicy(cfg, result.curve)

    def evaluate_point(env_steps: int, phase: str) -> dict[str, Any]:
        path = export_policy(algo, folder.join("policies", f"{phase}-{env_steps:08d}").uri, spec, frames, game, cfg,
                             {"stage": "finetune", "phase": phase, "env_steps": env_steps, "updates": algo.updates})  # fmt: skip
        played = evaluate_greedy(path, frames, cfg, f.eval_episodes) if f.eval_episodes else []
        scores = [e["score"] for e in played]
        point = {"env_steps": env_steps, "phase": phase, "updates": algo.updates, "mean": float(np.mean(scores)) if scores else float("nan"),
                 "std": float(np.std(scores)) if scores else float("nan"), "scores": scores, "seeds": [e["seed"] for e in played], "policy": path}  # fmt: skip
        result.curve.append(point)
        # every exported policy, for a player following the newest one (`play.follow: latest`)
        write_bytes_atomic(folder.join("latest.json"), json.dumps({"checkpoint": path, "env_steps": env_steps,
                           "phase": phase}).encode())  # fmt: skip

        write_bytes_atomic(curve_file, (json.dumps(result.curve, indent=1) + "\n").encode())
        logger.log(
            env_steps,
            {"charts/eval_score": point["mean"], "charts/eval_score_std": point["std"], "phase": phase},
        )
        best.consider(point)  # writes best.json when the point beats the best so far
        print(
            f"finetune [{phase}] env steps {env_steps:,}: greedy score {point['mean']:.1f} +- {point['std']:.1f} over {len(scores)} episodes",
            flush=True,
        )
        if on_eval is not None and phase != "final":
            # the final point is reported once everything is written: a Tune trial may be stopped
            # (ASHA at max_t) as soon as it reports
            on_eval(point)
        return point

    from ray.rllib.utils.metrics import LEARNER_RESULTS

    def learner(key: str) -> float:
        v = algo.metrics.peek((LEARNER_RESULTS, "default_policy", key), default=float("nan"))
        return float(v) if v is not None else float("nan")

    try:
        # ---- offline phase -------------------------------------------------------------------------
        if not resumed and pol is not None and f.eval_episodes:
            evaluate_point(0, "bc")
        todo = max(0, f.offline_updates - algo.offline_done)
        if todo > 0:
            if not algo.demo_steps:
                raise RayappError("the offline phase needs demonstrations")
            bar = Progress(todo, "finetune offline", unit="updates", log_every=15)
            t0 = time.perf_counter()
            for i in range(1, todo + 1):
                algo.offline_update()
                if i % 100 == 0 or i == todo:
                    row = {"phase": "offline", "losses/td_loss": learner("qf_loss"), "losses/margin_loss": learner("margin_loss"),
                           "q/mean": learner("qf_mean"), "perf/learner_updates_per_s": i / (time.perf_counter() - t0), "updates": algo.updates}  # fmt: skip
                    logger.log(i - todo, row)  # offline rows precede env step 0 on the x-axis
                    result.history.append(row)
                    bar.update(
                        i - bar.n,
                        td=f"{row['losses/td_loss']:.4f}",
                        margin=f"{row['losses/margin_loss']:.3f}",
                    )
            bar.close()
            algo.sync_env_runners()
            if f.eval_episodes:
                evaluate_point(0, "offline")
            if f.online_steps and f.checkpoint_every_steps:  # a rerun does not repeat the offline phase
                ckpt.save_checkpoint(algo, rllib_dir)
                saved_at = ckpt.env_steps(algo)
        # ---- online phase --------------------------------------------------------------------------
        steps = ckpt.env_steps(algo)
        next_eval = (steps // f.eval_every_steps + 1) * f.eval_every_steps if f.eval_every_steps else None
        next_ckpt = ckpt.next_due(steps, f.checkpoint_every_steps)
        bar = (
            Progress(f.online_steps, "finetune online", unit="steps", log_every=15, initial=steps)
            if f.online_steps > steps
            else None
        )
        t_last, s_last, u_last = time.perf_counter(), steps, algo.updates
        runners = RunnerWatch(algo, f.num_env_runners, lambda s: print(s, flush=True))
        while steps < f.online_steps:
            out = algo.train()
            new_steps = int(_value(out, "env_runners", "num_env_steps_sampled_lifetime", default=steps))
            now = time.perf_counter()
            row = {
                "phase": "online",
                "charts/episode_score": _value(out, "env_runners", "episode_score"),
                "charts/episode_return": _value(out, "env_runners", "episode_return_mean"),
                "charts/epsilon": _epsilon(f, new_steps),
                "losses/td_loss": _value(out, "learners", "default_policy", "qf_loss", default=float("nan")),
                "losses/margin_loss": _value(
                    out, "learners", "default_policy", "margin_loss", default=float("nan")
                ),
                "q/mean": _value(out, "learners", "default_policy", "qf_mean", default=float("nan")),
                "batch/demo_fraction": _value(
                    out, "learners", "default_policy", "demo_fraction", default=float("nan")
                ),
                "perf/env_steps_per_s": (new_steps - s_last) / (now - t_last),
                "perf/learner_updates_per_s": (algo.updates - u_last) / (now - t_last),
                "fault/env_runner_restarts": _value(
                    out, "fault_tolerance", "num_remote_worker_restarts", default=0
                ),
                "fault/env_runners_healthy": runners.update(new_steps),
                "wall_time": time.time(),
                "updates": algo.updates,
            }
            t_last, s_last, u_last = now, new_steps, algo.updates
            logger.log(new_steps, row)
            result.history.append({"env_steps": new_steps, **row})
            if bar:
                score = row["charts/episode_score"]
                bar.update(
                    new_steps - steps,
                    score=f"{score:.1f}" if isinstance(score, float) else "-",
                    steps_per_s=f"{row['perf/env_steps_per_s']:.0f}",
                )
            steps = new_steps
            if next_ckpt is not None and steps >= next_ckpt:
                ckpt.save_checkpoint(algo, rllib_dir)
                saved_at = steps
                next_ckpt += f.checkpoint_every_steps
            if next_eval is not None and steps >= next_eval and steps < f.online_steps:
                evaluate_point(steps, "online")
                next_eval += f.eval_every_steps
        if bar:
            bar.close()
        if f.online_steps and saved_at != steps:
            ckpt.save_checkpoint(algo, rllib_dir)
        if f.online_steps or not result.curve:
            final = evaluate_point(steps, "final")
        else:  # offline only: the policy after the offline phase is the final one
            final = result.curve[-1]
        result.final_policy = final["policy"]
        if not f.eval_episodes or f.select == "final":
            best.unselected(final)
        result.policy = best.policy or final["policy"]

        summary = {"policy": result.policy, "final_policy": result.final_policy, "env_steps": steps, "updates": algo.updates,
                   "demo": result.demo, "env_runner_changes": runners.changes, "curve": [{k: p[k] for k in ("env_steps", "phase", "mean", "std")} for p in result.curve]}  # fmt: skip
        write_bytes_atomic(folder.join("result.json"), (json.dumps(summary, indent=2) + "\n").encode())
        if on_eval is not None and final["phase"] == "final":
            on_eval(final)
    finally:
        logger.close()
        algo.stop()
    return result


def add_demos(algo, first, rest, cfg: Config, stats: DemoStats) -> None:
    """Stream the demonstrations into the replay buffer, one episode in memory at a time."""
    from rayapp.rl.buffer import BufferFull

    bar = Progress(None, "finetune demonstrations", unit="steps", log_every=15)
    try:
        for ep in itertools.chain([first], rest):
            bar.update(algo.add_demo(ep.frames, ep.actions, ep.rewards, ep.terminated, ep.life_lost))
    except BufferFull as e:
        raise RayappError(
            f"the demonstrations in {cfg.data_uri} do not fit in finetune.demo_capacity={cfg.finetune.demo_capacity:,} "
            f"steps ({e}); raise finetune.demo_capacity (7 KB per step at 84x84 gray) or record fewer episodes"
        ) from None
    finally:
        bar.close()
    if stats.nonzero_rewards == 0 and not cfg.finetune.margin_only:
        raise RayappError(
            f"offline data at {cfg.data_uri} has no rewards (all {stats.transitions:,} steps are 0): TD learning needs them; "
            "set finetune.margin_only=true to train on the margin loss alone, or record with a reward source"
        )


def _epsilon(f, steps: int) -> float:
    if f.epsilon_steps <= 0:
        return f.epsilon
    frac = min(1.0, steps / f.epsilon_steps)
    return f.epsilon_start + frac * (f.epsilon - f.epsilon_start)


def read_curve(run_dir: str) -> list[dict[str, Any]]:

    loc = resolve(run_dir).join("finetune", "curve.json")
    return json.loads(read_bytes(loc)) if exists(loc) else []


os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
