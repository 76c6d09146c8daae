"""DQfD's RLlib config from rayapp's `finetune` section, and the Ray resources a run asks for.

Where each part of a fine-tuning run lives (what a manifest must provide for it):

- the driver (the `rayapp finetune` process; in a sweep, the Tune trial's process; under KubeRay,
  the job's driver on the head pod, which has no GPU): the algorithm, both replay buffers, the
  offline phase's sampling and priority updates, exporting policies;
- the learner: with `finetune.num_learners=0` inside the driver (CPU only); with 1, a remote
  learner actor, the only place a GPU is asked for (`finetune.use_gpu`, which implies 1);
- env runners (`finetune.num_env_runners`; 0 samples in the driver): CPU only, on any node with
  `finetune.cpus_per_env_runner` CPUs and `finetune.env_runner_resources` (game PCs);
- greedy evaluation: Ray tasks of `eval.cpus_per_worker` CPUs.

The driver reaches the learner only through the `LearnerGroup`'s public API (`update`,
`get_weights`/`set_weights`, `get_state`/`set_state` in checkpoints), so a remote learner needs no
special path.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from rayapp.config import Config, FinetuneConfig
from rayapp.frames import FrameSpec
from rayapp.models.nets import ModelSpec
from rayapp.rl.env import ENV_NAME, env_config, register

__all__ = ["GAME_PC", "runner_resources", "learner_placement", "dqn_config", "build_algorithm", "resource_bundles", "eval_tasks", "training_intensity", "uses_demos"]

GAME_PC = "game_pc"  # the custom resource a game PC advertises: `ray start --resources='{"game_pc": 1}'`


def learner_placement(f: FinetuneConfig) -> tuple[int, float]:
    """(learner actors, GPUs per learner): `num_learners` null means 1 with a GPU, else 0 (the
    learner in the driver). `Config.validate` refuses a GPU learner in the driver."""
    n = f.num_learners if f.num_learners is not None else (1 if f.use_gpu else 0)
    return n, (1.0 if f.use_gpu else 0.0)


def dqn_config(cfg: Config, spec: ModelSpec, frames: FrameSpec, seed: int | None = None):
    """The `DQNConfig` of the DQfD algorithm with rayapp's Q-module, env, learner and settings."""
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from rayapp.rl.algorithm import DQfD
    from rayapp.rl.learner import DQfDTorchLearner
    from rayapp.rl.module import PixelQModule

    f = cfg.finetune
    register()
    screen = cfg.env.backend == "screen"
    if f.epsilon_steps > 0:
        epsilon: Any = [[0, f.epsilon_start], [f.epsilon_steps, f.epsilon]]
    else:
        epsilon = f.epsilon
    num_learners, gpus_per_learner = learner_placement(f)
    return (
        DQNConfig(algo_class=DQfD)
        .environment(
            ENV_NAME,
            # the spaces too: a runner on a game PC without its game builds a MissingGame from them
            env_config={**env_config(cfg.env, frames, f.clip_rewards, cfg.inputs), "obs_shape": list(spec.input_shape),
                        "n_actions": spec.controls[0][1]},  # fmt: skip
            # discrete actions: nothing to unsquash or clip, and the connector that would deep-copies
            # every action batch first (2.6% of an env runner's time)
            normalize_actions=False,
            clip_actions=False,
            # the spaces are known here: RLlib need not ask a remote runner, which on a game PC
            # may be the one that is missing or broken
            observation_space=gym.spaces.Box(0, 255, tuple(spec.input_shape), np.uint8),
            action_space=gym.spaces.Discrete(spec.controls[0][1]),
        )
        # finiteness is checked once per update in the learner, which skips a non-finite update whole
        .framework("torch", torch_skip_nan_gradients=True)
        .env_runners(
            num_env_runners=f.num_env_runners,
            num_envs_per_env_runner=f.envs_per_env_runner,
            rollout_fragment_length=f.rollout_fragment_length,
            num_cpus_per_env_runner=f.cpus_per_env_runner,
            num_gpus_per_env_runner=0,  # acting stays on CPU nodes, whatever the learner uses
            custom_resources_per_env_runner=runner_resources(cfg),
            # a game PC without a display or game window fails its runner, not the whole run
            validate_env_runners_after_construction=not screen,
            # the replay buffer takes list-based episodes as they are: stacking each fragment into
            # arrays in the env runner cost ~8% of its time (fresh 250 KB arrays page-fault here)
            episodes_to_numpy=False,
        )
        .learners(
            # a GPU learner is always a remote actor: the driver may run where there is no GPU
            num_learners=num_learners,
            num_gpus_per_learner=gpus_per_learner,
            learner_class=DQfDTorchLearner,
            learner_config_dict={
                "one_step_weight": 1.0,
                "n_step_weight": f.n_step_weight,
                "margin_weight": f.margin_weight,
                "margin": f.margin,
                "l2_weight": f.l2_weight,
                "margin_only": f.margin_only,
                "updates_per_env_step": f.updates_per_env_step,
            },
        )
        .training(
            lr=f.lr,
            gamma=f.gamma,
            n_step=f.n_step,
            train_batch_size_per_learner=f.batch_size,
            training_intensity=training_intensity(f),
            double_q=True,
            dueling=False,
            num_atoms=1,
            epsilon=epsilon,
            grad_clip=f.grad_clip or None,
            grad_clip_by="global_norm",
            td_error_loss_fn="huber",
            target_network_update_freq=f.target_update_steps,
            # with demonstrations mixed in, updates start at once (on demonstrations until the online
            # part holds `learning_starts` steps: the buffer decides); without, DQN waits as usual
            num_steps_sampled_before_learning_starts=0 if uses_demos(f) and f.demo_ratio > 0 else f.learning_starts,
            replay_buffer_config={
                "type": "rayapp.rl.buffer.DemoMixEpisodeReplayBuffer",
                "capacity": f.buffer_size,
                "alpha": f.priority_alpha,
                "beta": f.priority_beta,
                "demo_capacity": f.demo_capacity,
                "demo_ratio": f.demo_ratio if uses_demos(f) else 0.0,
                "priority_eps": f.priority_eps,
                "demo_priority_eps": f.demo_priority_eps,
                "demo_action_balance": f.demo_action_balance,
                "online_learning_starts": f.learning_starts,
                "life_loss_terminal": f.life_loss_terminal,
                "frame_channels": spec.input_shape[0] // frames.frame_stack,
                "frame_stack": frames.frame_stack,
                "seed": cfg.run.seed if seed is None else seed,
            },
        )
        .rl_module(
            rl_module_spec=RLModuleSpec(module_class=PixelQModule),
            model_config={"spec": spec.to_json()},
        )
        .reporting(min_sample_timesteps_per_iteration=f.steps_per_iteration)
        .fault_tolerance(
            restart_failed_env_runners=True,
            max_num_env_runner_restarts=100,
            delay_between_env_runner_restarts_s=1.0,
            # every iteration waits this long for runners being restarted (a game PC that went away
            # and has not come back): RLlib's 30 s default would stall training that long each time
            env_runner_health_probe_timeout_s=f.env_runner_probe_timeout_s,
        )
        .callbacks(on_episode_end=_on_episode_end)
        .debugging(seed=cfg.run.seed if seed is None else seed, log_level="ERROR")
    )


def runner_resources(cfg: Config) -> dict[str, float]:
    """Custom resources of one env runner: `finetune.env_runner_resources`; on the screen, at least
    one `game_pc`, so a game PC (a node started with `--resources='{"game_pc": 1}'`) runs exactly
    one runner, driving its own screen and inputs."""
    res = {k: float(v) for k, v in cfg.finetune.env_runner_resources.items()}
    if cfg.env.backend == "screen":
        res.setdefault(GAME_PC, 1.0)
    return res


def uses_demos(f: FinetuneConfig) -> bool:
    return f.offline_updates > 0 or f.demo_ratio > 0 or f.margin_only


def training_intensity(f: FinetuneConfig) -> float:
    """DQN's `training_intensity` (replayed rows per sampled step) for `updates_per_env_step`.

    DQN turns it into updates per sample call as if the local env runner sampled too
    (`calculate_rr_weights` counts num_env_runners + 1); it does not when there are remote ones,
    so the intensity is scaled by R / (R + 1) to make `updates_per_env_step` exact."""
    r = f.num_env_runners
    return f.updates_per_env_step * f.batch_size * max(r, 1) / max(r + 1, 1)


def build_algorithm(cfg: Config, spec: ModelSpec, frames: FrameSpec, seed: int | None = None):
    """The DQfD algorithm with rayapp's Q-module, env, learner and the config's settings."""
    return dqn_config(cfg, spec, frames, seed).build_algo()


def resource_bundles(cfg: Config, driver_cpus: float, driver_gpus: float = 0.0) -> list[dict[str, float]]:
    """The Ray resource bundles of one fine-tuning run: its driver's first, then the learner actor,
    env runners and evaluation tasks (what a Tune trial's placement group must hold: Ray places a
    trial's actors and tasks inside it). The learner and env-runner bundles are RLlib's own
    (`Algorithm.default_resource_request`)."""
    f = cfg.finetune
    num_learners, gpus = learner_placement(f)
    bundles = [{"CPU": float(driver_cpus), "GPU": float(driver_gpus)}]
    # RLlib's "auto" CPUs per learner: 1 for a CPU learner, 0 beside a GPU
    bundles += [{"CPU": 0.0 if gpus else 1.0, "GPU": gpus} for _ in range(num_learners)]
    runner = {"CPU": float(f.cpus_per_env_runner), "GPU": 0.0}
    runner.update(runner_resources(cfg))
    bundles += [dict(runner) for _ in range(f.num_env_runners)]
    if f.eval_episodes:
        bundles += [{"CPU": float(cfg.eval.cpus_per_worker)} for _ in range(eval_tasks(cfg, f.eval_episodes))]
    return bundles


def eval_tasks(cfg: Config, episodes: int) -> int:
    """Ray tasks one greedy evaluation of `episodes` episodes plays in."""
    return max(1, min(episodes, cfg.eval.workers))


def _on_episode_end(*, episode, metrics_logger=None, **kwargs) -> None:
    """Env-runner callback: the raw (unclipped) score of every finished episode."""
    info = episode.get_infos(-1) or {}
    if metrics_logger is not None and "episode_score" in info:
        metrics_logger.log_value("episode_score", float(info["episode_score"]), window=20)
