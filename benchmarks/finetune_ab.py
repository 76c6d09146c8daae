"""Fine-tuning A/B: this checkout's `rayapp finetune` against an earlier revision's, same BC run,
same budget, several seeds, every final policy scored on the same fresh seeds; and the replay
buffer's bytes per buffered step, before (RLlib's episode buffer of 4-frame stacks, the episode
list alive beside it) and after (one frame per step).

    python benchmarks/finetune_ab.py --bc-run runs/bcq --baseline b7c9f48            # 50k steps, 3 seeds
    python benchmarks/finetune_ab.py --bc-run runs/bcq --steps 10000 --seeds 3       # a smaller budget
    python benchmarks/finetune_ab.py --quick                                          # memory part only
    python benchmarks/finetune_ab.py --bc-run runs/bcq --arms new,variant --steps 0 \
        --variant-set finetune.demo_action_balance=0                               # one at a time, offline only

Every finished run is one JSON file in benchmarks/results/finetune_ab/ (commit them): a rerun skips
what is there and aggregates all of it, so an A/B longer than one sitting adds up. Arms of one seed
run back to back on the same BC run (its weights' hash is in every file name), and only such pairs
make the paired difference.

Each run is `rayapp finetune` in its own process (its own local Ray), the baseline from a git
worktree of `--baseline`. Scores: greedy, `--episodes` episodes per policy on seeds 7,000,000+
(no run's model selection saw them). Per arm: the mean over seeds of each seed's mean, with the
standard error over seeds; the difference new - old with its standard error. Prints one JSON
object as its last line.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FRESH_SEEDS = 7_000_000


def memory_per_step(uri: str, frames, max_steps: int) -> dict:
    """Peak traced bytes per demonstration step: the old path (stacked episodes in a list, copied
    into RLlib's PrioritizedEpisodeReplayBuffer) against the new buffer."""
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode
    from ray.rllib.utils.replay_buffers.prioritized_episode_buffer import PrioritizedEpisodeReplayBuffer

    from rayapp.data.samples import stack_indices
    from rayapp.rl.buffer import DemoMixEpisodeReplayBuffer
    from rayapp.rl.offline import demo_episodes

    demos = list(demo_episodes(uri, frames, max_steps=max_steps))
    steps = sum(len(d.actions) for d in demos)
    k = frames.frame_stack
    tracemalloc.start()
    old = []
    for d in demos:  # what rayapp.rl.offline built before: 4-frame stacks per step
        t = len(d.frames)
        obs = d.frames[stack_indices(np.zeros(t, np.int64), np.arange(t), k)].reshape(
            t, -1, *d.frames.shape[2:]
        )
        old.append(SingleAgentEpisode(observations=list(obs), actions=list(d.actions), rewards=list(d.rewards),
                                      terminated=d.terminated, truncated=not d.terminated, len_lookback_buffer=0))  # fmt: skip
    buf = PrioritizedEpisodeReplayBuffer(capacity=steps + len(demos) + 10)
    buf.add(old)
    old_peak = tracemalloc.get_traced_memory()[1]
    del old, buf
    tracemalloc.stop()
    tracemalloc.start()
    new = DemoMixEpisodeReplayBuffer(capacity=2, demo_capacity=steps + len(demos), frame_stack=k,
                                     frame_channels=demos[0].frames.shape[1])  # fmt: skip
    for d in demos:
        new.add_demo(d.frames, d.actions, d.rewards, d.terminated)
    new_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    gib16 = 16 * 2**30
    frame = int(np.prod(demos[0].frames.shape[1:]))
    return {
        "memory_steps": steps,
        "frame_bytes": frame,
        "bytes_per_step_before": round(old_peak / steps),
        "bytes_per_step_after": round(new_peak / steps),
        "demo_steps_in_16GiB_before": int(gib16 / (old_peak / steps)),
        "demo_steps_in_16GiB_after": int(gib16 / (new_peak / steps)),
    }


def stacking_speed(
    uri: str, frames, max_steps: int, batch: int = 32, n_step: int = 3, reps: int = 200
) -> dict:
    """Observation assembly per sampled batch (obs, obs after 1 step, obs after n steps for every row):
    stacking single frames at sampling time (this buffer) against LZ4-compressed 4-frame stacks,
    RLlib's choice for its tuned Atari examples (`compress_observations`), one compressed stack per
    step. The baseline uses `lz4.frame` on the raw bytes, without the pickle and base64 that
    `ray.rllib.utils.compression.pack` adds (faster than RLlib's own). Also the LZ4 stacks' bytes."""
    import lz4.frame

    from rayapp.data.samples import stack_indices
    from rayapp.rl.buffer import DemoMixEpisodeReplayBuffer
    from rayapp.rl.offline import demo_episodes

    demos = list(demo_episodes(uri, frames, max_steps=max_steps))
    k = frames.frame_stack
    steps = sum(len(d.actions) for d in demos)
    buf = DemoMixEpisodeReplayBuffer(capacity=2, demo_capacity=steps + len(demos), frame_stack=k,
                                     frame_channels=demos[0].frames.shape[1])  # fmt: skip
    packed, nxt = [], []
    for d in demos:
        buf.add_demo(d.frames, d.actions, d.rewards, d.terminated)
        t = len(d.frames)
        obs = d.frames[stack_indices(np.zeros(t, np.int64), np.arange(t), k)].reshape(
            t, -1, *d.frames.shape[2:]
        )
        base = len(packed)
        packed += [lz4.frame.compress(np.ascontiguousarray(o).tobytes()) for o in obs]
        nxt += [base + min(i + 1, t - 1) for i in range(t)]
    nxt = np.array(nxt)
    shape = (k * demos[0].frames.shape[1], *demos[0].frames.shape[2:])
    store, rng = buf.demos, np.random.default_rng(0)

    def ours() -> None:
        g, _ = store.sample(batch, rng, 0.4)
        ret = store.returns(g, n_step, 0.99)
        store.stack(g, k), store.stack(ret["end"], k), store.stack(store.next[g % store.capacity], k)

    def compressed() -> None:
        i = rng.integers(0, len(packed), batch)
        j = i.copy()
        for _ in range(n_step):
            j = nxt[j]
        for idx in (i, nxt[i], j):
            np.stack([np.frombuffer(lz4.frame.decompress(packed[x]), np.uint8).reshape(shape) for x in idx])

    times = {}
    for name, fn in (("ours", ours), ("lz4", compressed)) * 2:  # alternating, the second round counts
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        times[name] = (time.perf_counter() - t0) / reps
    return {
        "stack_ms_per_batch_single_frames": round(times["ours"] * 1e3, 3),
        "stack_ms_per_batch_lz4_stacks": round(times["lz4"] * 1e3, 3),
        "lz4_over_single_frames": round(times["lz4"] / times["ours"], 2),
        "bytes_per_step_lz4_stacks": round(sum(len(p) for p in packed) / steps),
    }


def baseline_tree(rev: str, base: str) -> str:
    path = os.path.join(base, f"baseline-{rev}")
    if not os.path.exists(path):
        subprocess.run(
            ["git", "-C", ROOT, "worktree", "add", "--detach", path, rev], check=True, capture_output=True
        )
    return path


def run_finetune(
    code: str, run: str, seed: int, bc_run: str, data_uri: str, steps: int, extra: list[str]
) -> dict:
    sets = [f"run.dir={run}", f"run.seed={seed}", f"finetune.init_checkpoint={bc_run}", f"data.uri={data_uri}",
            f"finetune.online_steps={steps}", f"finetune.eval_every_steps={max(steps // 2, 500)}",
            "finetune.eval_episodes=5", *extra]  # fmt: skip
    if steps:
        sets.append(f"finetune.checkpoint_every_steps={steps}")
    cmd = [
        sys.executable,
        "-m",
        "rayapp.cli",
        "finetune",
        "--config",
        os.path.join(code, "configs", "quickstart.yaml"),
    ]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, PYTHONPATH=code, RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    with open(os.path.join(os.path.dirname(run), os.path.basename(run) + ".log"), "w") as log:
        subprocess.run(cmd, cwd=code, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
    result = json.load(open(os.path.join(run, "finetune", "result.json")))
    best = json.load(open(os.path.join(run, "finetune", "best.json")))
    return {"final": result["final_policy"], "best": best.get("checkpoint") or best.get("policy"),
            "curve": [{k: p[k] for k in ("env_steps", "phase", "mean")} for p in result["curve"]],
            "seconds": round(time.perf_counter() - t0)}  # fmt: skip


def score(policy: str, cfg, episodes: int) -> list[float]:
    import ray

    from rayapp.envs.episodes import play_episodes

    env_cfg = dict(dataclasses.asdict(cfg.env), max_episode_steps=cfg.eval.max_episode_steps)
    seeds = [FRESH_SEEDS + i for i in range(episodes)]
    remote = ray.remote(num_cpus=1)(play_episodes)
    from rayapp.models.checkpoint import load_policy

    frames = load_policy(policy).frames.to_json()
    refs = [remote.remote("policy", "greedy", seeds[c::2], env_cfg, policy, frames, 0.0, 0) for c in range(2)]
    return [e["score"] for part in ray.get(refs) for e in part]


def mean_se(xs) -> dict:
    xs = np.asarray(xs, float)
    se = float(xs.std(ddof=1) / np.sqrt(len(xs))) if len(xs) > 1 else float("nan")
    return {"mean": round(float(xs.mean()), 2), "se": round(se, 2), "n": len(xs)}


def bc_fingerprint(bc_policy: str) -> str:
    """The BC weights' SHA-256 (12 hex digits): runs on the same BC share it, and only they pair."""
    from rayapp.models.checkpoint import WEIGHTS_FILE
    from rayapp.storage import read_bytes, resolve

    return hashlib.sha256(read_bytes(resolve(bc_policy).join(WEIGHTS_FILE))).hexdigest()[:12]


# ---- results that outlive the session: one JSON file per finished run ---------------------------
def result_name(arm: str, rev: str, seed: int, steps: int, episodes: int, sets: list[str], bc: str) -> str:
    tag = hashlib.sha256("\n".join(sets).encode()).hexdigest()[:6] if sets else "defaults"
    return f"{arm}-{rev}-{tag}-{steps}steps-{episodes}ep-seed{seed}-bc{bc}.json"


def load_results(folder: str) -> list[dict]:
    out = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith(".json") and not name.startswith("bc-"):
            out.append(json.load(open(os.path.join(folder, name))))
    return out


def aggregate(results: list[dict], arms: dict[str, dict], steps: int, episodes: int) -> dict:
    """Per arm: the mean over seeds of each seed's mean (SE over seeds). Pairs: for every (BC run,
    seed) that has both arms, the difference new - old (or variant - new); its mean and SE over
    pairs. A run whose partner ran on another BC run counts for its arm, not for a pair."""

    def key(r: dict) -> str:
        return next(
            (a for a, spec in arms.items() if spec["rev"] == r["revision"] and spec["sets"] == r["sets"]), ""
        )

    mine = [r for r in results if r["steps"] == steps and r["episodes"] == episodes and key(r)]
    out: dict = {}
    for arm in arms:
        rs = [r for r in mine if key(r) == arm]
        if rs:
            out[f"{arm}_final"] = {**mean_se([np.mean(r["scores"]) for r in rs]),
                                   "runs": [{"seed": r["seed"], "bc": r["bc"], "mean": round(float(np.mean(r["scores"])), 2)} for r in rs]}  # fmt: skip
    names = list(arms)
    for a, b in zip(names, names[1:]):
        by = {(r["bc"], r["seed"], key(r)): float(np.mean(r["scores"])) for r in mine}
        diffs = [by[(bc, s, b)] - by[(bc, s, a)] for (bc, s, k) in by if k == a and (bc, s, b) in by]
        if diffs:
            d = mean_se(diffs)
            out[f"difference_{b}_minus_{a}"] = {**d, "pairs": len(diffs), "beyond_se": bool(len(diffs) > 1 and abs(d["mean"]) > d["se"])}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bc-run", help="a run folder with replays/ and pretrain/")
    ap.add_argument(
        "--baseline", default="b7c9f48", help="the revision whose finetune is the baseline (arm old)"
    )
    ap.add_argument(
        "--new", default="HEAD", help="the revision of arm new (pin it to add runs to earlier ones)"
    )
    ap.add_argument(
        "--steps", type=int, default=50_000, help="online env steps per run (0: the offline phase only)"
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--episodes", type=int, default=30, help="evaluation episodes per policy")
    ap.add_argument("--arms", default="old,new", help="old, new and variant (new with --variant-set)")
    ap.add_argument(
        "--variant-rev", default=None, help="the revision of arm variant (default: --new), for a setting newer than arm new's runs"
    )
    ap.add_argument("--set", action="append", default=[], help="extra --set for arm new")
    ap.add_argument(
        "--variant-set", action="append", default=[], help="--set of arm variant (one-at-a-time runs)"
    )
    ap.add_argument(
        "--results",
        default=os.path.join(ROOT, "benchmarks", "results", "finetune_ab"),
        help="one JSON per finished run; runs found here are not run again, and all of them are aggregated",
    )
    ap.add_argument("--keep", default=None, help="keep run folders here")
    ap.add_argument("--quick", action="store_true", help="the memory part only, on a few thousand steps")
    a = ap.parse_args()
    from rayapp.config import load_config
    from rayapp.models.checkpoint import load_policy, resolve_checkpoint

    base = a.keep or tempfile.mkdtemp(prefix="finetune-ab-")
    os.makedirs(base, exist_ok=True)
    out: dict = {"benchmark": "finetune_ab", "machine": f"{os.cpu_count()} cpus", "quick": a.quick}
    if a.bc_run is None:
        if not a.quick:
            raise SystemExit("--bc-run is needed for the learning part")
        from rayapp.record import record

        a.bc_run = os.path.join(base, "bc")
        cfg = load_config(
            os.path.join(ROOT, "configs", "smoke.yaml"), [f"run.dir={a.bc_run}", "record.episodes=4"]
        )
        record(cfg, show_progress=False)
    cfg = load_config(os.path.join(ROOT, "configs", "quickstart.yaml"), [f"run.dir={a.bc_run}"])
    from rayapp.frames import FrameSpec

    frames = (
        load_policy(resolve_checkpoint(a.bc_run, stages=("pretrain",))).frames
        if not a.quick
        else FrameSpec.from_config(cfg.data)
    )
    if a.quick or a.steps:  # the memory part needs no learning runs; skip it for offline-only A/Bs
        out.update(memory_per_step(cfg.data_uri, frames, 5000 if a.quick else 20000))
        out.update(stacking_speed(cfg.data_uri, frames, 5000 if a.quick else 20000))
    if a.quick:
        print(json.dumps(out))
        return
    print(f"memory: {out}", flush=True)
    import ray

    def rev(r: str) -> str:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short=7", r], capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip

    new, old = rev(a.new), rev(a.baseline)
    arms = {"old": {"rev": old, "sets": []}, "new": {"rev": new, "sets": a.set},
            "variant": {"rev": rev(a.variant_rev) if a.variant_rev else new, "sets": a.set + a.variant_set}}  # fmt: skip
    arms = {k: arms[k] for k in a.arms.split(",")}
    bc_policy = resolve_checkpoint(a.bc_run, stages=("pretrain",))
    bc = bc_fingerprint(bc_policy)
    os.makedirs(a.results, exist_ok=True)
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    bc_file = os.path.join(a.results, f"bc-{bc}-{a.episodes}ep.json")
    if not os.path.exists(bc_file):
        s = score(bc_policy, cfg, a.episodes)
        json.dump({"bc": bc, "bc_run": a.bc_run, "scores": s, **mean_se(s)}, open(bc_file, "w"), indent=1)
    out["bc"] = {k: v for k, v in json.load(open(bc_file)).items() if k in ("bc", "mean", "se", "n")}
    # both arms run from git worktrees, so commits landing meanwhile change neither; seed by seed,
    # both arms of a seed on the same BC run, so an interrupted A/B leaves whole pairs
    codes = {spec["rev"]: baseline_tree(spec["rev"], base) for spec in arms.values()}
    for seed in range(a.seeds):
        for arm, spec in arms.items():
            name = result_name(arm, spec["rev"], seed, a.steps, a.episodes, spec["sets"], bc)
            path = os.path.join(a.results, name)
            if os.path.exists(path):
                print(f"{arm} seed {seed}: done before ({name})", flush=True)
                continue
            r = run_finetune(codes[spec["rev"]], os.path.join(base, f"{arm}-{seed}"), seed, a.bc_run, cfg.data_uri,
                             a.steps, spec["sets"])  # fmt: skip
            scores = score(r["final"], cfg, a.episodes)
            rec = {"arm": arm, "revision": spec["rev"], "sets": spec["sets"], "seed": seed, "steps": a.steps,
                   "episodes": a.episodes, "bc": bc, "scores": scores, "mean": round(float(np.mean(scores)), 2),
                   "curve": r["curve"], "seconds": r["seconds"], "machine": out["machine"],
                   "date": time.strftime("%Y-%m-%d")}  # fmt: skip
            tmp = path + ".tmp"
            json.dump(rec, open(tmp, "w"), indent=1)
            os.replace(tmp, path)
            print(f"{arm} seed {seed}: {r['seconds']} s, final {rec['mean']}, curve "
                  f"{[round(p['mean'], 1) for p in r['curve']]}", flush=True)  # fmt: skip
    out.update(steps=a.steps, seeds=a.seeds, episodes=a.episodes, arms=arms)
    out.update(aggregate(load_results(a.results), arms, a.steps, a.episodes))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
