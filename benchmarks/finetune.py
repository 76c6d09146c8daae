"""DQN fine-tuning on Breakout: does BC -> offline -> online beat DQN from scratch and BC alone?

Learning (one fixed online budget per arm, greedy evaluation with the same seeds for every arm):
  (a) scratch   DQN from a random network, epsilon 1.0 -> 0.05, no demonstrations
  (b) bc        the BC policy alone
  (c) dqfd      BC weights -> offline updates on the recorded transitions -> online, demos mixed in
Throughput, in the same run:
  sampling      env steps/s of one RLlib env runner (4 envs, the Q-module's exploration) against a
                bare loop stepping the same wrapped envs (gymnasium SyncVectorEnv) and running the
                same network's inference, both on one process with one torch thread
  update        one learner update (32 transitions) through `learner_group.update` against the same
                double-DQN + margin update in a bare torch loop, same threads

    python benchmarks/finetune.py --bc-run runs/quickstart        # full, about 35 minutes here
    python benchmarks/finetune.py --quick                         # minutes: tiny budgets

Without --bc-run, the quickstart's dataset and BC policy are made first. Writes the learning curves
to benchmarks/finetune_curves.png (--plot) and prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = os.path.join(os.path.dirname(__file__), "..")
OVERRIDES: list[str] = []  # --set section.key=value for the throughput parts and every arm


def sampling_rates(cfg, pol, seconds: float, rounds: int = 6) -> dict:
    """RLlib's env runner and the bare loop alternate in `rounds` bursts (the machine's speed
    drifts); the ratio is the median over rounds."""
    import gymnasium as gym
    import torch

    from rayapp.rl.env import env_config, make_pixel_env
    from rayapp.rl.finetune import build_algorithm, load_into, q_spec

    f = cfg.finetune
    algo = build_algorithm(cfg, q_spec(cfg, pol.spec), pol.frames)
    ec = env_config(cfg.env, pol.frames, f.clip_rewards)
    envs = gym.vector.SyncVectorEnv([lambda: make_pixel_env(ec) for _ in range(f.envs_per_env_runner)])
    threads = torch.get_num_threads()
    try:
        load_into(algo, pol.state_dict)
        sample = lambda er: sum(len(e) for e in er.sample())  # noqa: E731
        algo.env_runner_group.foreach_env_runner(sample, local_env_runner=False)  # warm
        net = pol.model()
        rng = np.random.default_rng(0)
        obs, _ = envs.reset(seed=0)

        def rllib_burst(t: float) -> float:
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < t:
                n += sum(algo.env_runner_group.foreach_env_runner(sample, local_env_runner=False))
            return n / (time.perf_counter() - t0)

        def bare_burst(t: float) -> float:
            # the same wrapped envs, vectorised the same way, the same network's inference and
            # epsilon-greedy, one process and one torch thread like the env runner
            nonlocal obs
            torch.set_num_threads(1)
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < t:
                with torch.no_grad():
                    q = net(torch.from_numpy(obs))[0]
                a = q.argmax(1).numpy()
                explore = rng.random(len(a)) < f.epsilon
                a[explore] = rng.integers(0, q.shape[1], explore.sum())
                obs, *_ = envs.step(a)
                n += len(a)
            torch.set_num_threads(threads)
            return n / (time.perf_counter() - t0)

        bare_burst(2.0)
        rl, bare = [], []
        for _ in range(rounds):
            rl.append(rllib_burst(seconds / rounds))
            bare.append(bare_burst(seconds / rounds))
    finally:
        algo.stop()
        envs.close()
    ratios = [r / b for r, b in zip(rl, bare)]
    return {
        "rllib_env_steps_per_s": round(float(np.median(rl)), 1),
        "bare_env_steps_per_s": round(float(np.median(bare)), 1),
        "sampling_fraction_of_bare": round(float(np.median(ratios)), 3),
        "sampling_fraction_rounds": [round(x, 3) for x in ratios],
        "envs_per_env_runner": f.envs_per_env_runner,
        "rollout_fragment_length": f.rollout_fragment_length,
    }


def update_times(cfg, pol, demos, n: int) -> dict:
    """One learner update through RLlib (`learner_group.update` on a batch from the replay buffer)
    against the same DQfD update (1-step + n-step double-DQN Huber, margin, L2, clip, Adam) in a
    bare torch loop on the same rows."""
    import torch

    from rayapp.models import build_model
    from rayapp.rl.finetune import build_algorithm, load_into, q_spec
    from rayapp.rl.learner import margin_loss, td_target

    f = cfg.finetune
    algo = build_algorithm(cfg, q_spec(cfg, pol.spec), pol.frames)
    try:
        load_into(algo, pol.state_dict)
        for d in demos:
            algo.add_demo(d.frames, d.actions, d.rewards, d.terminated)
        buf = algo.local_replay_buffer
        batches = [buf.sample(num_items=f.batch_size, n_step=f.n_step, gamma=f.gamma, beta=f.priority_beta, demos_only=True)
                   for _ in range(n + 5)]  # fmt: skip
        from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

        times = []
        for i, eps in enumerate(batches):
            t0 = time.perf_counter()
            algo.learner_group.update(episodes=eps, timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: i})
            times.append(time.perf_counter() - t0)
        rllib = float(np.median(times[5:]))
    finally:
        algo.stop()
    net = build_model(q_spec(cfg, pol.spec))
    net.load_state_dict(pol.state_dict, strict=False)
    target = copy.deepcopy(net)
    opt = torch.optim.Adam(net.parameters(), lr=f.lr, foreach=True)
    b, e0 = f.batch_size, batches[0]
    col = lambda key: torch.as_tensor(np.stack([e.get_extra_model_outputs(key, 0) for e in e0]))  # noqa: E731
    obs = torch.from_numpy(np.stack([e.get_observations(0) for e in e0]))
    nxt = torch.from_numpy(np.stack([e.get_observations(1) for e in e0]))
    nxt1 = col("next_obs_1")
    act = torch.tensor([int(e.get_actions(0)) for e in e0])
    rew = torch.tensor([float(e.get_rewards(0)) for e in e0])
    done = torch.tensor([float(e.is_terminated) for e in e0])
    rew1, done1, w, ns = col("reward_1").float(), col("terminated_1").float(), col("weights").float(), col("n_step").float()

    def step():
        q_all = net(torch.cat([obs, nxt, nxt1]))[0]
        q, qn, qn1 = q_all[:b], q_all[b : 2 * b], q_all[2 * b :]
        with torch.no_grad():
            qt = target(torch.cat([nxt, nxt1]))[0]
        qa = q.gather(1, act[:, None]).squeeze(1)
        huber = torch.nn.functional.huber_loss
        yn = td_target(qn, qt[:b], rew, done, f.gamma**ns)
        y1 = td_target(qn1, qt[b:], rew1, done1, f.gamma)
        loss = ((w * huber(qa, y1, reduction="none")).mean() + f.n_step_weight * (w * huber(qa, yn, reduction="none")).mean()
                + f.margin_weight * margin_loss(q, act, torch.ones(b), f.margin)
                + f.l2_weight * sum((p**2).sum() for p in net.parameters()))  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), f.grad_clip, foreach=True)
        opt.step()

    for _ in range(5):
        step()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    bare = float(np.median(times))
    return {
        "rllib_update_ms": round(rllib * 1000, 1),
        "bare_update_ms": round(bare * 1000, 1),
        "update_ratio": round(rllib / bare, 3),
    }


def run_arm(name: str, base: str, sets: list[str]) -> dict:
    from rayapp.config import load_config
    from rayapp.rl.finetune import finetune

    run = os.path.join(base, name)
    cfg = load_config(os.path.join(ROOT, "configs", "quickstart.yaml"), [f"run.dir={run}", *sets, *OVERRIDES])
    t0 = time.perf_counter()
    r = finetune(cfg)
    return {
        "curve": r.curve,
        "seconds": round(time.perf_counter() - t0),
        "history": r.history,
        "policy": r.policy,
        "final": r.final_policy,
    }


def plot(arms: dict, bc_score: float, teacher: float | None, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name, arm in arms.items():
        pts = [p for p in arm["curve"] if p["phase"] in ("offline", "online", "final") or name == "scratch"]
        if not pts:
            continue
        x = [p["env_steps"] for p in pts]
        m = np.array([p["mean"] for p in pts])
        s = np.array([p["std"] for p in pts])
        ax.plot(x, m, marker="o", label=name)
        ax.fill_between(x, m - s, m + s, alpha=0.15)
    ax.axhline(bc_score, color="gray", ls="--", label="BC alone")
    if teacher:
        ax.axhline(teacher, color="#4c72b0", ls=":", label="teacher")
    ax.set_xlabel("online env steps")
    ax.set_ylabel("greedy score")
    ax.set_title("Breakout: DQN from scratch vs BC -> offline -> online")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--bc-run",
        help="a run folder with replays/ and pretrain/ (default: make one with the quickstart config)",
    )
    ap.add_argument("--steps", type=int, default=None, help="online env steps per arm")
    ap.add_argument("--part", choices=["all", "throughput", "learning"], default="all")
    ap.add_argument("--plot", default=None, help="where the curves PNG goes")
    ap.add_argument("--keep", default=None, help="keep the arms' run folders here")
    ap.add_argument("--set", action="append", default=[], help="config override (finetune.x=y)")
    a = ap.parse_args()
    OVERRIDES.extend(a.set)
    import ray

    from rayapp.config import load_config
    from rayapp.rl.finetune import evaluate_greedy, init_policy
    from rayapp.rl.offline import demo_episodes

    steps = a.steps or (1000 if a.quick else 50_000)
    cpus = os.cpu_count() or 2
    ray.init(num_cpus=cpus, include_dashboard=True, log_to_driver=False)
    base = a.keep or tempfile.mkdtemp(prefix="finetune-bench-")
    os.makedirs(base, exist_ok=True)
    out: dict = {
        "benchmark": "finetune",
        "quick": a.quick,
        "machine": f"{platform.machine()} {cpus} cpus",
        "online_steps_per_arm": steps,
        "overrides": a.set,
    }
    try:
        bc_run = a.bc_run
        if bc_run is None:
            from rayapp.record import record
            from rayapp.train.bc import pretrain

            bc_run = os.path.join(base, "bc")
            sets = [f"run.dir={bc_run}"] + (
                ["record.episodes=6", "env.max_episode_steps=300", "pretrain.epochs=1"] if a.quick else []
            )
            cfg = load_config(os.path.join(ROOT, "configs", "quickstart.yaml"), sets)
            record(cfg, show_progress=False)
            pretrain(cfg)
        cfg = load_config(os.path.join(ROOT, "configs", "quickstart.yaml"), [f"run.dir={bc_run}", *OVERRIDES])
        pol = init_policy(cfg)
        if a.part in ("all", "throughput"):
            out.update(sampling_rates(cfg, pol, 10 if a.quick else 60))
            demos = list(demo_episodes(cfg.data_uri, pol.frames, max_steps=5000))
            out.update(update_times(cfg, pol, demos, 20 if a.quick else 100))
        if a.part in ("all", "learning"):
            evals = 3 if a.quick else 10
            data = f"data.uri={cfg.data_uri}"
            every = max(steps // 5, 500)
            common = [data, f"finetune.online_steps={steps}", f"finetune.eval_every_steps={every}", f"finetune.checkpoint_every_steps={steps}",
                      "finetune.eval_episodes=5" if not a.quick else "finetune.eval_episodes=2"]  # fmt: skip
            if a.quick:
                common += ["finetune.steps_per_iteration=250", "eval.max_episode_steps=500"]
            arms = {}
            arms["dqfd"] = run_arm(
                "dqfd",
                base,
                common
                + [f"finetune.init_checkpoint={bc_run}"]
                + (["finetune.offline_updates=100"] if a.quick else []),
            )
            arms["scratch"] = run_arm("scratch", base, common + ["finetune.init_checkpoint=none", "finetune.offline_updates=0", "finetune.demo_ratio=0",
                                                                 "finetune.margin_weight=0", "finetune.epsilon=0.05", "finetune.epsilon_start=1.0",
                                                                 f"finetune.epsilon_steps={max(1, steps // 2)}"])  # fmt: skip
            # final scores: every policy over the same `evals` seeds
            final_cfg = load_config(
                os.path.join(ROOT, "configs", "quickstart.yaml"),
                [f"run.dir={bc_run}"] + (["eval.max_episode_steps=500"] if a.quick else []),
            )
            # on the evaluation seeds (rayapp.envs.seeds): not those the arms chose their best policy on
            final_pols = {"bc": pol.path, "scratch": arms["scratch"]["final"], "dqfd": arms["dqfd"]["final"],
                          "dqfd_best": arms["dqfd"]["policy"]}  # fmt: skip
            scores = {
                k: [
                    e["score"] for e in evaluate_greedy(p, pol.frames, final_cfg, evals, purpose="evaluation")
                ]
                for k, p in final_pols.items()
            }
            import dataclasses

            from rayapp.envs.episodes import play_episodes
            from rayapp.envs.seeds import episode_seeds

            env_cfg = dict(
                dataclasses.asdict(final_cfg.env), max_episode_steps=final_cfg.eval.max_episode_steps
            )
            teacher = [
                e["score"]
                for e in play_episodes(
                    "teacher",
                    "teacher",
                    episode_seeds(final_cfg.run.seed, "evaluation", evals),
                    env_cfg,
                    None,
                    None,
                    0.0,
                )
            ]
            for k, v in scores.items():
                out[f"{k}_score_mean"] = round(float(np.mean(v)), 2)
                out[f"{k}_score_std"] = round(float(np.std(v)), 2)
            out["teacher_score_mean"] = round(float(np.mean(teacher)), 2)
            out["eval_episodes"] = evals
            out["dqfd_beats_scratch"] = out["dqfd_score_mean"] > out["scratch_score_mean"]
            out["dqfd_beats_bc"] = out["dqfd_score_mean"] > out["bc_score_mean"]
            out["curves"] = {
                k: [(p["env_steps"], p["phase"], round(p["mean"], 2)) for p in v["curve"]]
                for k, v in arms.items()
            }
            out["arm_seconds"] = {k: v["seconds"] for k, v in arms.items()}
            for k, v in arms.items():
                rates = [h["perf/env_steps_per_s"] for h in v["history"] if "perf/env_steps_per_s" in h]
                out[f"{k}_train_env_steps_per_s"] = round(float(np.median(rates)), 1) if rates else None
            if a.plot:
                plot(arms, out["bc_score_mean"], out["teacher_score_mean"], a.plot)
                out["plot"] = a.plot
    finally:
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)
        ray.shutdown()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
