"""The whole config tree (`Config`: one field per section) and the checks that span several keys."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from rayapp.config.lam import LamConfig, VideoConfig, validate_video_sections
from rayapp.config.sections import (
    ArcadeConfig,
    DataConfig,
    EnvConfig,
    EvalConfig,
    FinetuneConfig,
    InputsConfig,
    ModelConfig,
    PlayConfig,
    PretrainConfig,
    RayConfig,
    RecordConfig,
    RunConfig,
    SweepConfig,
)
from rayapp.errors import ConfigError

__all__ = ["Config"]


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    inputs: InputsConfig = field(default_factory=InputsConfig)
    arcade: ArcadeConfig = field(default_factory=ArcadeConfig)
    play: PlayConfig = field(default_factory=PlayConfig)
    data: DataConfig = field(default_factory=DataConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    lam: LamConfig = field(default_factory=LamConfig)

    # ---- derived values -------------------------------------------------------------------
    @property
    def data_uri(self) -> str:
        """`data.uri`, or `<run.dir>/replays` when it is empty."""
        return self.data.uri or os.path.join(self.run.dir, "replays")

    def validate(self) -> None:
        """Checks that span several keys; single-key types are checked on load."""
        r = self.record
        if r.episodes < 0 or r.steps < 0:
            raise ConfigError("record.episodes and record.steps must be >= 0")
        if r.episodes == 0 and r.steps == 0:
            raise ConfigError("record.episodes and record.steps are both 0: set at least one budget")
        if not 0.0 <= r.epsilon <= 1.0:
            raise ConfigError(f"record.epsilon must be in [0, 1], got {r.epsilon}")
        if r.collectors < 1:
            raise ConfigError(f"record.collectors must be >= 1, got {r.collectors}")
        for key, res in (("record.collector_resources", r.collector_resources),
                         ("finetune.env_runner_resources", self.finetune.env_runner_resources)):  # fmt: skip
            for name, amount in res.items():
                if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
                    raise ConfigError(f"{key}.{name} must be a number of resources >= 0, got {amount!r}")
        if r.policy == "checkpoint" and not r.checkpoint:
            raise ConfigError(
                "record.policy=checkpoint needs record.checkpoint (a run folder or checkpoint folder)"
            )
        if not 1 <= r.jpeg_quality <= 100:
            raise ConfigError(f"record.jpeg_quality must be in [1, 100], got {r.jpeg_quality}")
        if r.shard_mb <= 0 or r.max_shard_mb < r.shard_mb:
            raise ConfigError("record.shard_mb must be > 0 and record.max_shard_mb >= record.shard_mb")
        if r.shard_steps < 1:
            raise ConfigError("record.shard_steps must be >= 1")
        if r.row_group_rows < 1:
            raise ConfigError("record.row_group_rows must be >= 1")
        if self.env.frameskip < 1 or self.env.max_episode_steps < 1:
            raise ConfigError("env.frameskip and env.max_episode_steps must be >= 1")
        if not 0.0 <= self.env.sticky_actions <= 1.0:
            raise ConfigError(f"env.sticky_actions must be in [0, 1], got {self.env.sticky_actions}")
        p = self.pretrain
        if p.epochs < 1 or p.batch_size < 1 or p.lr <= 0 or p.num_workers < 1:
            raise ConfigError(
                "pretrain.epochs, pretrain.batch_size, pretrain.num_workers must be >= 1 and pretrain.lr > 0"
            )
        if self.model.center and self.model.center_frames < 1:
            raise ConfigError(f"model.center_frames must be >= 1, got {self.model.center_frames}")
        if self.model.arch == "cnn_lstm" and self.data.clip_length == 0:
            raise ConfigError("model.arch=cnn_lstm trains on clips: set data.clip_length (e.g. 100)")
        if self.model.arch == "cnn" and self.data.clip_length > 0:
            raise ConfigError(
                "data.clip_length is for recurrent models: set model.arch=cnn_lstm or data.clip_length=0"
            )
        f = self.finetune
        if (
            f.offline_updates < 0
            or f.online_steps < 0
            or f.batch_size < 1
            or f.n_step < 1
            or f.num_env_runners < 0
        ):
            raise ConfigError(
                "finetune.offline_updates/online_steps >= 0, finetune.batch_size/n_step >= 1, finetune.num_env_runners >= 0"
            )
        if (
            f.demo_capacity < 2
            or f.buffer_size < 2
            or f.priority_eps <= 0
            or f.demo_priority_eps <= 0
            or f.grad_clip < 0
        ):
            raise ConfigError(
                "finetune.demo_capacity and finetune.buffer_size >= 2, finetune.priority_eps and demo_priority_eps > 0, "
                "finetune.grad_clip >= 0"
            )
        if not 0 <= f.demo_ratio <= 1 or not 0 <= f.epsilon <= 1 or f.updates_per_env_step <= 0:
            raise ConfigError(
                "finetune.demo_ratio and finetune.epsilon in [0, 1], finetune.updates_per_env_step > 0"
            )
        if f.num_learners is not None and not 0 <= f.num_learners <= 1:
            raise ConfigError(
                f"finetune.num_learners must be 0 (learn in the driver) or 1 (a remote learner actor), got {f.num_learners}: "
                "DQfD's priority updates follow one learner's batches"
            )
        if f.use_gpu and f.num_learners == 0:
            raise ConfigError(
                "finetune.use_gpu=true with finetune.num_learners=0 would put the GPU learner in the driver process, "
                "which on a cluster runs on the CPU-only head: set finetune.num_learners=1 (or null) for a remote GPU learner"
            )
        if f.online_steps and f.rollout_fragment_length < 1:
            raise ConfigError("finetune.rollout_fragment_length must be >= 1")
        sw = self.sweep
        if sw.num_samples < 1 or sw.max_concurrent < 1 or sw.grace_period < 1 or sw.reduction_factor < 2:
            raise ConfigError(
                "sweep.num_samples, sweep.max_concurrent, sweep.grace_period >= 1 and sweep.reduction_factor >= 2"
            )
        e = self.eval
        bad = [m for m in e.modes if m not in ("greedy", "sampled")] + [
            b for b in e.baselines if b not in ("teacher", "random")
        ]
        if bad:
            raise ConfigError(f"eval.modes are greedy/sampled and eval.baselines teacher/random; got {bad}")
        if e.episodes < 1 or e.workers < 1 or e.max_episode_steps < 1:
            raise ConfigError("eval.episodes, eval.workers and eval.max_episode_steps must be >= 1")
        if not 0 <= e.q_epsilon <= 1 or not 0 <= e.epsilon <= 1:
            raise ConfigError(
                f"eval.epsilon and eval.q_epsilon must be in [0, 1], got {e.epsilon} and {e.q_epsilon}"
            )
        self._validate_screen()
        i = self.inputs
        needs = {"keyboard": ("keys", i.keys), "gamepad": ("gamepad_actions or inputs.gamepad_heads",
                 i.gamepad_actions or i.gamepad_heads)}  # fmt: skip
        if i.backend in needs and not needs[i.backend][1]:
            raise ConfigError(
                f"inputs.backend={i.backend} needs inputs.{needs[i.backend][0]} (the action mapping)"
            )
        if len(i.mouse_grid) != 2 or min(i.mouse_grid) < 1:
            raise ConfigError(f"inputs.mouse_grid must be [cols, rows] >= 1, got {i.mouse_grid}")
        d = self.data
        if not 0.0 < d.train_fraction <= 1.0 or d.train_episodes < 0:
            raise ConfigError(f"data.train_fraction must be in (0, 1] and data.train_episodes >= 0, got "
                              f"{d.train_fraction} and {d.train_episodes}")  # fmt: skip
        if d.max_corrupt_shards < 0:
            raise ConfigError("data.max_corrupt_shards must be >= 0")
        if len(d.resize) != 2 or min(d.resize) < 0:
            raise ConfigError(f"data.resize must be [height, width], got {d.resize}")
        if len(d.crop) != 4 or min(d.crop) < 0:
            raise ConfigError(f"data.crop must be [top, bottom, left, right] >= 0, got {d.crop}")
        if d.frame_stack < 1 or d.clip_length < 0:
            raise ConfigError("data.frame_stack must be >= 1 and data.clip_length >= 0")
        if d.val_fraction < 0 or d.test_fraction < 0 or d.val_fraction + d.test_fraction >= 1:
            raise ConfigError(
                "data.val_fraction and data.test_fraction must be >= 0 and leave episodes to train on"
            )
        if not 0 <= d.balance_power <= 1 or d.max_resample_rate < 1:
            raise ConfigError("data.balance_power must be in [0, 1] and data.max_resample_rate >= 1")
        if d.rows_per_task < 1 or d.read_cpus < 0 or d.shuffle_buffer < 0 or d.object_store_mb < 0:
            raise ConfigError("data.rows_per_task >= 1, data.read_cpus >= 0 and data.shuffle_buffer >= 0")

    def _validate_screen(self) -> None:
        e, a = self.env, self.arcade
        if e.fps < 0:
            raise ConfigError(f"env.fps must be >= 0 (0: 60 / env.frameskip), got {e.fps}")
        if len(e.frame_size) != 2 or min(e.frame_size) < 0 or (0 in e.frame_size and max(e.frame_size) > 0):
            raise ConfigError(f"env.frame_size must be [height, width] > 0, or [0, 0], got {e.frame_size}")
        if e.region and (len(e.region) != 4 or min(e.region[2:]) < 1):
            raise ConfigError(
                f"env.region must be [left, top, width, height] with width, height >= 1, got {e.region}"
            )
        if e.monitor < 0:
            raise ConfigError(f"env.monitor must be >= 0 (0: all monitors), got {e.monitor}")
        for key in ("score_region", "game_over_region"):
            r = getattr(e, key)
            if r and (len(r) != 4 or min(r[:2]) < 0 or min(r[2:]) < 1):
                raise ConfigError(
                    f"env.{key} must be [left, top, width, height] with width, height >= 1, got {r}"
                )
        if e.game_api_timeout_s <= 0 or e.time_limit_s < 0 or not 0 <= e.score_max_distance <= 1:
            raise ConfigError(
                "env.game_api_timeout_s must be > 0, env.time_limit_s >= 0, env.score_max_distance in [0, 1]"
            )
        if e.backend == "screen":
            if e.capture == "region" and not e.region:
                raise ConfigError("env.capture=region needs env.region: [left, top, width, height]")
            if e.capture == "window" and not e.window_title.strip():
                raise ConfigError(
                    "env.capture=window needs env.window_title (e.g. 'rayapp arcade: Breakout')"
                )
            pc = self.finetune.env_runner_resources.get("game_pc")
            if pc is not None and float(pc) != 1.0:
                raise ConfigError(
                    f"env.backend=screen: finetune.env_runner_resources.game_pc is {pc}, but a game PC (a node "
                    "with game_pc: 1) must run exactly one env runner: leave it unset or set it to 1"
                )
            if self.finetune.envs_per_env_runner != 1:
                raise ConfigError(
                    f"env.backend=screen: one screen is one env, but finetune.envs_per_env_runner is "
                    f"{self.finetune.envs_per_env_runner}: set it to 1 (one env runner per game PC)"
                )
        if a.scale < 1 or a.fps <= 0 or a.frames < 0 or not 0.0 <= a.sticky_actions <= 1.0:
            raise ConfigError(
                "arcade.scale >= 1, arcade.fps > 0, arcade.frames >= 0, arcade.sticky_actions in [0, 1]"
            )
        p = self.play
        if (p.fps is not None and p.fps < 0) or p.reload_poll_s < 0 or p.steps < 0 or p.episodes < 0 or p.scale < 1:
            raise ConfigError(
                "play.fps >= 0 (or null), play.reload_poll_s >= 0, play.steps >= 0, play.episodes >= 0, play.scale >= 1"
            )
        if not 0.0 <= p.epsilon <= 1.0 or p.console_every_s <= 0 or p.video_steps < 1:
            raise ConfigError("play.epsilon in [0, 1], play.console_every_s > 0, play.video_steps >= 1")
        if p.video and not p.video.lower().endswith((".gif", ".mp4")):
            raise ConfigError(f"play.video must end in .gif or .mp4, got {p.video!r}")
        validate_video_sections(self.video, self.lam)
