"""The config sections: one dataclass per section, each field with its default and help text
(`rayapp config keys` prints them). The game-side sections (env, inputs, arcade) are in `game`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rayapp.config.fields import opt
from rayapp.config.game import ArcadeConfig, EnvConfig, InputsConfig, PlayConfig

__all__ = [
    "opt",
    "RunConfig",
    "RayConfig",
    "EnvConfig",
    "InputsConfig",
    "ArcadeConfig",
    "PlayConfig",
    "DataConfig",
    "RecordConfig",
    "ModelConfig",
    "PretrainConfig",
    "FinetuneConfig",
    "EvalConfig",
    "SweepConfig",
]


@dataclass
class RunConfig:
    dir: str = opt(
        "runs/default",
        "folder where a stage writes its outputs: resolved config, checkpoints, metrics, reports",
        path=True,
    )
    seed: int = opt(0, "base random seed; collectors and workers derive their own from it")


@dataclass
class RayConfig:
    address: str = opt(
        "",
        "Ray cluster to join ('auto', 'ray://host:10001'); empty: RAY_ADDRESS if set, else start a local Ray",
    )
    num_cpus: int | None = opt(None, "logical CPUs of a local Ray started by rayapp (null: all cores)")
    num_gpus: int | None = opt(None, "GPUs of a local Ray started by rayapp (null: detect)")
    dashboard: bool = opt(
        True,
        "start the Ray dashboard with a local Ray (http://127.0.0.1:8265); Ray Train's state checks use it",
    )


@dataclass
class DataConfig:
    uri: str = opt(
        "",
        "the dataset a stage reads or writes: a path, file://, s3://bucket/prefix or gs://; empty: <run.dir>/replays",
        path=True,
    )
    max_corrupt_shards: int = opt(
        0, "corrupt shards a reader may skip (and count) before it fails; 0: fail on the first"
    )
    # ---- what a network sees (BC, DQN, evaluation and the player share these) ----------------
    grayscale: bool = opt(True, "convert frames to one gray channel")
    resize: list[int] = opt(
        [84, 84], "frame size after cropping, [height, width]; [0, 0] keeps the cropped size"
    )
    crop: list[int] = opt(
        [0, 0, 0, 0], "pixels cut from the source frame before resizing: [top, bottom, left, right]"
    )
    frame_stack: int = opt(4, "frames per sample (the current one and the previous k-1 of the same episode)")
    clip_length: int = opt(
        0, "recurrent models: samples are clips of this many steps (100 = 10 s at 10 fps); 0: single steps"
    )
    label: Literal["action", "teacher_action", "latent_action"] = opt(
        "action",
        "the label to imitate: the action taken, what the teacher wanted (noisy_teacher datasets), or the latent action of `rayapp lam label`",
    )
    # ---- splits, balance, shuffle ---------------------------------------------------------------
    val_fraction: float = opt(
        0.1, "share of episodes held out for validation (split by episode, never by step)"
    )
    test_fraction: float = opt(0.1, "share of episodes held out for testing")
    split_seed: int = opt(0, "seed of the episode split; keep it fixed so every stage sees the same split")
    train_fraction: float = opt(
        1.0, "train on this share of the training split's episodes only (label-efficiency studies: 0.1 = 10% of the labels)"
    )
    train_episodes: int = opt(0, "train on this many of the training split's episodes only (0: train_fraction decides)")
    balance: Literal["none", "weights", "resample"] = opt(
        "none",
        "action balancing at sampling time: inverse-frequency loss weights, or class-balanced resampling",
    )
    balance_power: float = opt(1.0, "1: fully balanced classes, 0.5: square-root tempering, 0: unchanged")
    max_resample_rate: float = opt(20.0, "resample: at most this many copies of a rare-class step per epoch")
    shuffle_buffer: int = opt(10000, "rows in each training worker's local shuffle buffer (0: off)")
    shuffle_blocks: bool = opt(
        True, "shuffle rows inside each block as it is read (free: the rows are gathered anyway)"
    )
    prefetch_batches: int = opt(4, "batches each worker prepares ahead")
    rows_per_task: int = opt(
        4000, "rows per read task (whole row groups); tasks are the unit of parallel reading"
    )
    object_store_mb: int = opt(
        1024,
        "object store budget of the ingest (blocks in flight); bounds its memory whatever the dataset size (0: Ray's default)",
    )
    read_cpus: float = opt(
        0.5, "CPUs reserved per read task (0.5 leaves room beside training workers on 2 CPUs)"
    )


@dataclass
class RecordConfig:
    source: Literal["atari", "screen"] = opt(
        "atari",
        "atari: collectors play the emulator (record.policy); screen: a person plays the game on the screen "
        "(env.capture...) and their held inputs (inputs.keys or the gamepad mapping) are recorded as the actions, "
        "at env.fps, in this process; record.episodes/steps stop it, or Ctrl+C",
    )
    policy: Literal["teacher", "random", "noisy_teacher", "checkpoint"] = opt(
        "teacher",
        "who plays: the scripted teacher (reads the emulator's RAM), random, the teacher with epsilon noise, or a trained checkpoint",
    )
    epsilon: float = opt(
        0.1, "noisy_teacher and checkpoint: probability of a uniformly random action instead of the policy's"
    )
    checkpoint: str = opt(
        "", "policy=checkpoint: a run folder (its best checkpoint) or a checkpoint folder", path=True
    )
    episodes: int = opt(20, "episodes to record in all (0: no limit, then `steps` must be set)")
    steps: int = opt(0, "stop after this many steps in all, finishing the episodes in progress (0: no limit)")
    collectors: int = opt(2, "collector actors recording in parallel into the same dataset")
    collector_cpus: float = opt(1.0, "CPUs reserved per collector actor")
    collector_resources: dict = opt(
        {},
        "custom Ray resources per collector, e.g. {game_pc: 1} to record on game PCs that joined the cluster",
    )
    max_collector_restarts: int = opt(2, "collectors that may die (and be replaced) before recording stops")
    append: bool = opt(False, "add episodes to an existing dataset instead of refusing to touch it")
    encoding: Literal["auto", "raw", "jpeg"] = opt(
        "auto",
        "frame encoding: raw bytes + zstd (lossless, best for small frames), jpeg (large captures); auto picks by size",
    )
    jpeg_quality: int = opt(90, "JPEG quality when encoding=jpeg")
    compression_level: int = opt(3, "zstd level for the Parquet columns")
    shard_mb: float = opt(
        64.0, "close a shard at the first episode end after it reaches this size on storage"
    )
    shard_steps: int = opt(
        20000, "or once it holds this many steps (Atari frames compress ~750x: 64 MB would be 500k steps)"
    )
    max_shard_mb: float = opt(
        512.0, "close a shard even mid-episode at this size (long episodes of large frames)"
    )
    row_group_rows: int = opt(1000, "rows per Parquet row group (the unit readers decode at once)")
    row_group_mb: float = opt(
        64.0, "flush a row group early when its frames reach this many megabytes in memory"
    )


@dataclass
class ModelConfig:
    arch: Literal["cnn", "cnn_lstm"] = opt(
        "cnn", "Nature DQN CNN, or CNN + LSTM over clips (set data.clip_length)"
    )
    hidden: int = opt(512, "features after the CNN's fully connected layer")
    lstm_hidden: int = opt(256, "cnn_lstm: LSTM state size")
    center: bool = opt(
        False,
        "subtract the training split's per-pixel mean frame from the inputs (computed by `rayapp pretrain`, kept in "
        "the checkpoint; a network started from a checkpoint keeps that one's): without it Pong's BC fits no better "
        "than the majority action (benchmarks/bc_inputs.py)",
    )
    center_frames: int = opt(10000, "model.center: the mean frame is that of the training split's first N frames (in recording order)")
    init_mode: Literal["all", "trunk"] = opt(
        "all",
        "what model.init_checkpoint gives: every weight, or the trunk only (new output heads: a network trained on "
        "other labels, such as latent actions, learns the real controls; `rayapp lam map`)",
    )
    trunk_lr: float | None = opt(None, "init_mode=trunk: learning rate of the initialised trunk (null: pretrain.lr; 0: frozen)")
    init_checkpoint: str = opt(
        "", "start from these weights: a checkpoint folder or a run folder (its best checkpoint)", path=True
    )


@dataclass
class PretrainConfig:
    epochs: int = opt(10, "passes over the training split")
    batch_size: int = opt(
        128,
        "samples per gradient step per worker (clips in clip mode); 128 is the fastest per CPU thread here",
    )
    lr: float = opt(5e-4, "Adam learning rate")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    grad_clip: float = opt(10.0, "clip the gradient norm (0: off)")
    label_smoothing: float = opt(0.0, "cross-entropy label smoothing")
    num_workers: int = opt(2, "Ray Train workers (data-parallel, DDP)")
    use_gpu: bool = opt(
        False, "one GPU per worker (or gpus_per_worker); mixed precision and channels-last on GPU"
    )
    cpus_per_worker: float = opt(
        0.5, "CPUs per worker (0.5 leaves CPUs for the read tasks on a small machine)"
    )
    gpus_per_worker: float = opt(1.0, "GPUs per worker when use_gpu (fractions share a GPU)")
    torch_threads: int = opt(0, "torch intra-op threads per worker (0: the worker's CPUs, at least 1)")
    amp: bool = opt(True, "bfloat16 autocast on GPU (ignored on CPU)")
    max_failures: int = opt(2, "worker-group failures to recover from (restart from the latest checkpoint)")
    checkpoints_to_keep: int = opt(
        2, "best checkpoints kept by validation balanced accuracy (the latest is always kept)"
    )


@dataclass
class FinetuneConfig:
    init_checkpoint: str = opt(
        "",
        "the BC policy to start from: a checkpoint or run folder; empty: <run.dir> (its pretrain); 'none': DQN from scratch",
        path=True,
        not_paths=("none",),
    )
    offline_updates: int = opt(
        2000, "learner updates on the demonstrations alone before touching the game (0: skip)"
    )
    online_steps: int = opt(50000, "env steps of the online phase (0: offline only)")
    demo_ratio: float = opt(0.5, "share of every online batch drawn from the demonstrations (RLPD's 50/50)")
    margin_weight: float = opt(
        5.0,
        "lambda2, weight of DQfD's large-margin loss on demonstration rows (0: off; the paper: 1); 5 keeps the "
        "BC policy's action ranking through the offline phase better (measured: benchmarks/RESULTS.md)",
    )
    margin: float = opt(0.8, "DQfD margin between the demonstrated action's Q-value and the others' (the paper: 0.8)")
    init_action_gap: float = opt(
        0.0,
        "scale BC's action head so its mean gap between the two best actions on demonstrations is this (the margin, 0.8, "
        "is natural; BC's logits gap ~8 on Breakout); the greedy policy is unchanged (0: BC's logits as they are)",
    )
    init_value_from_returns: bool = opt(
        False, "the Q-network's value starts at the demonstrations' mean discounted return (BC's logits start it at 0)"
    )
    n_step_weight: float = opt(1.0, "lambda1, weight of the n-step TD loss beside the 1-step one (the paper: 1)")
    l2_weight: float = opt(1e-5, "lambda3, weight of the L2 penalty on the Q-network's weights (the paper: 1e-5)")
    margin_only: bool = opt(False, "train on demonstrations without rewards: margin loss only, no TD loss")
    dueling: bool = opt(
        True,
        "Q = V(s) + A(s, a) - mean A: A starts as the BC head, V at zero, so TD fits values without first reordering actions",
    )
    clip_rewards: bool = opt(True, "rewards to their sign, as DQN on Atari does (scores are reported raw)")
    lr: float = opt(
        6.25e-5, "Adam learning rate (Rainbow's and DQfD's; 1e-4 erodes the BC policy faster offline)"
    )
    gamma: float = opt(0.99, "discount per step")
    life_loss_terminal: bool = opt(
        False,
        "TD targets do not bootstrap past a lost life (the env's `lives` info; in demonstrations the `lives` column), "
        "as a game over: DQN's training-time 'terminal on life loss' (Mnih et al. 2015); episodes and scores are unchanged",
    )
    n_step: int = opt(
        3, "n of the n-step TD loss (cut at episode ends; the paper: 10, Rainbow: 3); the 1-step loss is always there"
    )
    batch_size: int = opt(32, "transitions per learner update")
    updates_per_env_step: float = opt(
        0.25, "learner updates per env step online (0.25: one batch per 4 steps, Nature DQN)"
    )
    target_update_steps: int = opt(
        2000, "env steps between target-network syncs (offline, an update counts 1/updates_per_env_step)"
    )
    epsilon: float = opt(0.01, "exploration of the fine-tuned policy (it is competent from the start)")
    epsilon_start: float = opt(
        1.0, "from scratch: epsilon decays from this to `epsilon` over `epsilon_steps`"
    )
    epsilon_steps: int = opt(0, "env steps of the decay (0: constant `epsilon`)")
    buffer_size: int = opt(
        50000, "online replay buffer, env steps, oldest overwritten (demonstrations: finetune.demo_capacity)"
    )
    learning_starts: int = opt(
        1000, "online steps in the buffer before online rows are sampled (demonstrations fill in before)"
    )
    priority_alpha: float = opt(0.6, "prioritized replay exponent")
    priority_beta: float = opt(0.4, "importance-sampling exponent")
    priority_eps: float = opt(0.001, "added to online transitions' |TD error| for their priority (DQfD's epsilon_a)")
    demo_priority_eps: float = opt(
        1.0, "added to demonstrations' |TD error| for their priority (DQfD's epsilon_d: demonstrations keep being replayed)"
    )
    demo_action_balance: float = opt(
        1.0,
        "demonstration priorities times (action frequency)^-this (0: off): the teacher's rare actions (FIRE) are "
        "replayed often enough to keep; without it the offline phase loses FIRE (A/B: benchmarks/RESULTS.md)",
    )
    demo_capacity: int = opt(
        1_000_000,
        "demonstration steps the replay buffer holds (7 KB each at 84x84 gray); demonstrations are never evicted: more is an error",
    )
    grad_clip: float = opt(10.0, "gradients clipped to this global norm (0: no clipping)")
    num_env_runners: int = opt(1, "remote env runners (game processes; on game PCs, one per PC)")
    envs_per_env_runner: int = opt(
        16, "vectorised envs per env runner (batched inference: 16 amortise RLlib's per-call cost)"
    )
    cpus_per_env_runner: float = opt(1.0, "CPUs per env runner")
    env_runner_resources: dict = opt(
        {}, "custom Ray resources per env runner, e.g. {game_pc: 1} to collect rollouts on game PCs"
    )
    env_runner_probe_timeout_s: float = opt(
        2.0,
        "seconds each iteration waits for env runners being restarted (a game PC that went away); RLlib's default is 30",
    )
    rollout_fragment_length: int = opt(
        16, "steps per env per sample call (16 x 16 envs: Ray's per-call cost, ~8 ms here, is amortised)"
    )
    steps_per_iteration: int = opt(
        1000, "env steps per algorithm iteration (one metrics row, at least one sample call)"
    )
    use_gpu: bool = opt(
        False,
        "the learner on a GPU: a remote learner actor asking for one GPU (finetune.num_learners >= 1); env runners stay on CPU",
    )
    num_learners: int | None = opt(
        None,
        "RLlib learner actors: 0 learns in the driver process, 1 in a remote actor (where a GPU can be); null: 1 with use_gpu, else 0",
    )
    eval_every_steps: int = opt(
        10000, "greedy evaluation every this many online env steps (and before the first)"
    )
    eval_episodes: int = opt(
        3,
        "episodes per evaluation point of the learning curve, on the selection seeds (rayapp.envs.seeds), "
        "disjoint from those `rayapp evaluate` plays",
    )
    checkpoint_every_steps: int = opt(10000, "RLlib checkpoint every this many online env steps")
    select: Literal["best", "final"] = opt(
        "best",
        "the policy finetune/best.json names: the best curve point on the selection seeds (a point with few episodes "
        "can win by luck), or the final one (no selection, as the Atari 100k benchmark reports)",
    )


@dataclass
class EvalConfig:
    episodes: int = opt(
        10,
        "episodes per policy (greedy, sampled, teacher, random), on the evaluation seeds (rayapp.envs.seeds)",
    )
    max_episode_steps: int = opt(4500, "cap per evaluation episode (4,500 steps = 5 minutes of game time)")
    modes: list[str] = opt(
        ["greedy", "sampled"],
        "how the trained policy acts: greedy (argmax); sampled: a BC policy samples its softmax, "
        "a Q-network (fine-tuned) plays epsilon-greedy at eval.q_epsilon",
    )
    baselines: list[str] = opt(["teacher", "random"], "reference players measured in the same run")
    epsilon: float = opt(
        0.0, "greedy mode: probability of a random action (0.05 is the Atari convention for DQN)"
    )
    q_epsilon: float = opt(
        0.05,
        "sampled mode of a Q-network (a policy exported by `rayapp finetune`): probability of a random "
        "action, else greedy; 0.05 is the usual Atari evaluation epsilon, Dopamine evaluates at 0.001",
    )
    workers: int = opt(2, "parallel episode runners (Ray tasks)")
    cpus_per_worker: float = opt(1.0, "CPUs per episode runner")
    video_steps: int = opt(
        900, "steps of the greedy policy's first episode in the gameplay GIF (0: no video)"
    )
    video_fps: int = opt(30, "frames per second of the GIF")


@dataclass
class SweepConfig:
    stage: Literal["pretrain", "finetune"] = opt(
        "pretrain", "what each trial runs: behaviour cloning, or DQN fine-tuning"
    )
    space: dict = opt(
        {},
        "config keys to search, each {loguniform: [lo, hi]} | {uniform: [lo, hi]} | {randint: [lo, hi]} | {choice: [...]} | {grid: [...]}",
    )
    num_samples: int = opt(8, "trials (with grid entries: samples per grid point)")
    metric: str = opt(
        "",
        "what ASHA and the best trial go by; empty: val/balanced_accuracy (pretrain) or charts/eval_score (finetune)",
    )
    mode: Literal["max", "min"] = opt("max", "maximise or minimise the metric")
    scope: Literal["all", "last"] = opt(
        "all",
        "Tune's scope for the best trial: its best point over all it reported, or its last one (sturdier when points "
        "are noisy: a best over many 10-episode points picks flukes)",
    )
    scheduler: Literal["asha", "fifo"] = opt(
        "asha", "ASHA stops weak trials early; fifo runs every trial to the end"
    )
    grace_period: int = opt(2, "ASHA: reports (epochs, or evaluation points) before a trial may be stopped")
    reduction_factor: int = opt(3, "ASHA: keep about 1 in this many trials at each rung")
    max_concurrent: int = opt(1, "trials at a time (each trial reserves its own workers)")
    trial_cpus: float = opt(
        0.01,
        "CPUs reserved by a trial's own process (pretrain: Ray Train workers reserve theirs; finetune: the learner runs here unless num_learners=1)",
    )
    trial_gpus: float = opt(
        0.0,
        "GPUs reserved by a trial's own process (fractions share a GPU); finetune: 0, the learner actor asks via finetune.use_gpu",
    )
    max_failures: int = opt(0, "retries of a crashed trial (a crash never stops the sweep)")
