"""Does reinforcement learning pay? Fine-tuned agents against their scripted teacher, per game.

For each game (`configs/beat-teacher-<game>.yaml`): record the teacher, clone it (BC), then
fine-tune (BC -> offline DQfD -> online) on several seeds and DQN from scratch on one. Every policy
is scored greedy on the same fresh evaluation seeds (`run.seed` 50's evaluation block: no run's
model selection plays them; the runs use seeds 0, 1, ...). Arms: teacher, random, bc, scratch,
dqfd (the policy `finetune.select` names: the best point on the run's own selection seeds, as
`finetune/best.json` names it, or the final one) and dqfd_final (the run's last policy).

    python benchmarks/beat_teacher.py                              # breakout and pong, 3 seeds
    python benchmarks/beat_teacher.py --games freeway --seeds 3    # the third game
    python benchmarks/beat_teacher.py --quick                      # Breakout at tiny budgets: the path, no figures
    python benchmarks/beat_teacher.py --report --plot benchmarks/results/beat_teacher/curves.png  # from the files, no runs
    python benchmarks/beat_teacher.py --report --bc all            # every BC's runs pooled: the recipe, BC variation included

Each finished run or score is one JSON file in benchmarks/results/beat_teacher/ (commit them; a
rerun skips what is there, so a benchmark longer than a session adds up; a changed config makes new
files). Per arm: mean over seeds of each seed's mean with the SE over seeds (over episodes for one
seed), the interquartile mean over all seeds x episodes, the human-normalised mean (Dopamine's
human and random scores), and wall time. The gain over BC is dqfd - bc with the SE of the
difference. Writes benchmarks/beat_teacher_curves.png (--plot) and prints one JSON object last.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from finetune_ab import bc_fingerprint  # noqa: E402  (the BC weights' hash, as the A/B names its runs)

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
EVAL_RUN_SEED = 50  # the evaluation seeds: run.seed 50's evaluation block, which no arm's run uses
# Dopamine's (and the DQN papers') reference scores for human-normalised scores
HUMAN_RANDOM = {"breakout": (30.5, 1.7), "pong": (14.6, -20.7), "freeway": (29.6, 0.0)}
SCRATCH = ["finetune.init_checkpoint=none", "finetune.offline_updates=0", "finetune.demo_ratio=0",
           "finetune.margin_weight=0", "finetune.epsilon=0.05", "finetune.epsilon_start=1.0"]  # fmt: skip
QUICK = ["env.max_episode_steps=150", "eval.max_episode_steps=150", "record.episodes=2", "record.collectors=1",
         "pretrain.epochs=1", "pretrain.num_workers=1", "finetune.offline_updates=20", "finetune.learning_starts=32",
         "finetune.steps_per_iteration=64", "finetune.eval_episodes=1", "finetune.envs_per_env_runner=2",
         "finetune.num_env_runners=0", "finetune.rollout_fragment_length=16"]  # fmt: skip


def iqm(xs) -> float:
    """Interquartile mean: the mean of the middle 50% (rliable's aggregate; scipy's trim_mean 0.25)."""
    x = np.sort(np.asarray(xs, float))
    k = int(0.25 * len(x))
    return float(x[k : len(x) - k].mean()) if len(x) else float("nan")


def summarise(runs: list[list[float]], game: str) -> dict:
    """One arm: `runs` holds each seed's episode scores."""
    means = [float(np.mean(r)) for r in runs]
    flat = [s for r in runs for s in r]
    if len(runs) > 1:
        se = float(np.std(means, ddof=1) / np.sqrt(len(means)))
    else:
        se = float(np.std(flat, ddof=1) / np.sqrt(len(flat))) if len(flat) > 1 else float("nan")
    human, rand = HUMAN_RANDOM[game]
    m = float(np.mean(means))
    return {"mean": round(m, 2), "se": round(se, 2), "iqm": round(iqm(flat), 2), "seeds": len(runs),
            "episodes": len(flat), "human_normalised": round((m - rand) / (human - rand), 3),
            "per_seed": [round(x, 2) for x in means]}  # fmt: skip


def compare(game: str, arms: dict) -> dict:
    """The headline figures of one game: dqfd (the policy `finetune.select` names) against the
    teacher and against BC; the same for dqfd_final (each run's last policy, no selection) with `_final`."""
    out: dict = {}
    t, b = arms.get("teacher"), arms.get("bc")
    for arm, tail in (("dqfd", ""), ("dqfd_final", "_final")):
        d = arms.get(arm)
        if d and t:
            out[f"score_vs_teacher{tail}_{game}"] = round(d["mean"] - t["mean"], 2)
            out[f"beats_teacher{tail}_{game}"] = bool(d["mean"] > t["mean"])
        if d and b:
            se = float(np.hypot(d["se"], b["se"]))
            out[f"gain_vs_bc{tail}_{game}"] = round(d["mean"] - b["mean"], 2)
            out[f"gain_vs_bc_se{tail}_{game}"] = round((d["mean"] - b["mean"]) / se, 2) if se > 0 else None
    return out


# ---- runs ------------------------------------------------------------------------------------
# finetune keys added after results were recorded, with the value that behaves as before they existed
ADDED_LATER = {"life_loss_terminal": False, "init_action_gap": 0.0, "init_value_from_returns": False}


def config_tag(cfg) -> str:
    """What makes two runs comparable: env, data, record, pretrain and finetune values."""
    from rayapp.config import config_to_dict

    d = config_to_dict(cfg)
    keep = {k: d[k] for k in ("env", "record", "data", "pretrain", "finetune")}
    keep["finetune"].pop("init_checkpoint", None)
    keep["data"].pop("uri", None)
    for key, default in ADDED_LATER.items():  # at their defaults they change nothing: older files still count
        if keep["finetune"].get(key) == default:
            keep["finetune"].pop(key)
    keep["finetune"].pop("select", None)  # which policy best.json names: every run file scores both
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:8]


class Results:
    """One JSON file per finished piece of work, named by what it depends on."""

    def __init__(self, folder: str):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    def get(self, name: str) -> dict | None:
        p = os.path.join(self.folder, name + ".json")
        return json.load(open(p)) if os.path.exists(p) else None

    def put(self, name: str, rec: dict) -> dict:
        from rayapp.storage import resolve, write_bytes_atomic

        write_bytes_atomic(resolve(os.path.join(self.folder, name + ".json")), json.dumps(rec, indent=1).encode())
        return rec


def eval_cfg(cfg):
    """The benchmark's scoring: run.seed 50's evaluation seeds, in two tasks (one per core)."""
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=EVAL_RUN_SEED),
                               eval=dataclasses.replace(cfg.eval, workers=2))  # fmt: skip


def score_policy(policy: str, cfg, episodes: int) -> list[float]:
    from rayapp.models.checkpoint import load_policy
    from rayapp.rl.finetune import evaluate_greedy

    frames = load_policy(policy).frames
    return [e["score"] for e in evaluate_greedy(policy, frames, eval_cfg(cfg), episodes, purpose="evaluation")]


def score_player(player: str, cfg, episodes: int) -> list[float]:
    import ray

    from rayapp.envs.episodes import play_episodes
    from rayapp.envs.seeds import episode_seeds

    env_cfg = dict(dataclasses.asdict(cfg.env), max_episode_steps=cfg.eval.max_episode_steps)
    seeds = episode_seeds(EVAL_RUN_SEED, "evaluation", episodes)
    remote = ray.remote(num_cpus=1)(play_episodes)
    parts = ray.get([remote.remote(player, player, seeds[c::2], env_cfg, None, None, 0.0) for c in range(2)])
    return [e["score"] for p in parts for e in p]


def run_game(game: str, a, results: Results, base: str) -> dict:
    from rayapp.config import load_config
    from rayapp.models.checkpoint import resolve_checkpoint
    from rayapp.pipeline import run_pipeline
    from rayapp.rl.finetune import finetune

    config = os.path.join(ROOT, "configs", f"beat-teacher-{game}.yaml")
    quick = QUICK + [f"finetune.online_steps={a.steps or 200}", "finetune.eval_every_steps=100",
                     "finetune.checkpoint_every_steps=100"] if a.quick else []  # fmt: skip
    steps = [f"finetune.online_steps={a.steps}"] if a.steps and not a.quick else []
    bc_run = os.path.join(base, game, "bc")
    where = [f"run.dir={bc_run}", f"data.uri={os.path.join(bc_run, 'replays')}", f"finetune.init_checkpoint={bc_run}"]
    cfg = load_config(config, [*where, *quick, *steps, *a.set])
    tag, ep = config_tag(cfg), a.episodes
    if a.report:  # the committed results only, of the BC(s) --bc names
        bc, bc_seconds = None, None
        tags = [f"{tag}-bc{fp}" for fp in report_fingerprints(results, game, tag, ep, a.bc)]
    else:
        ran_before = os.path.exists(os.path.join(bc_run, "pretrain", "best.json"))
        t0 = time.perf_counter()
        run_pipeline(cfg, ["record", "pretrain"])  # skipped when done (--keep)
        bc_seconds = None if ran_before else round(time.perf_counter() - t0)  # record + pretrain, when run here
        bc = resolve_checkpoint(bc_run, stages=("pretrain",))
        tags = [f"{tag}-bc{bc_fingerprint(bc)}"]  # BC scores and fine-tuning runs hold for these BC weights only
    scores: dict[str, list[list[float]]] = {}
    seconds: dict[str, list[int]] = {}
    curves: dict[str, list] = {}

    def kept(name: str, make) -> dict | None:  # the result file, else (not with --report) make and keep it
        return results.get(name) or (None if a.report else results.put(name, make()))

    for player in ("teacher", "random"):
        name = f"{game}-{player}-{cfg.env.sticky_actions}sticky-{cfg.eval.max_episode_steps}cap-{ep}ep"
        rec = kept(name, lambda: {"scores": score_player(player, cfg, ep)})  # noqa: B023 (called at once)
        if rec:
            scores[player] = [rec["scores"]]
    for tag in tags:  # one BC, or with --report --bc all every BC's runs pooled (a BC a "seed" of its arm)
        rec = kept(f"{game}-bc-{tag}-{ep}ep", lambda: {"scores": score_policy(bc, cfg, ep), "seconds": bc_seconds})
        if rec:
            scores.setdefault("bc", []).append(rec["scores"])
            seconds.setdefault("bc", []).append(rec["seconds"])
    plan = [("scratch", s, SCRATCH + [f"finetune.epsilon_steps={max(1, cfg.finetune.online_steps // 2)}"]) for s in range(a.scratch_seeds)]  # fmt: skip
    plan += [("dqfd", s, [f"finetune.init_checkpoint={bc_run}"]) for s in range(a.seeds)]
    for (arm, seed, sets), tag in ((p, t) for t in tags for p in plan):
        name = f"{game}-{arm}-{tag}-{cfg.finetune.online_steps}steps-{ep}ep-seed{seed}"
        rec = results.get(name)
        if rec is None and a.report:
            continue
        if rec is None:
            run = os.path.join(base, game, f"{arm}-{seed}")
            rcfg = load_config(config, [f"run.dir={run}", f"run.seed={seed}", f"data.uri={cfg.data_uri}",
                                        *quick, *steps, *a.set, *sets])  # fmt: skip
            t0 = time.perf_counter()
            r = finetune(rcfg)
            secs = round(time.perf_counter() - t0)
            chosen = score_policy(r.policy, cfg, ep)
            final = chosen if r.final_policy == r.policy else score_policy(r.final_policy, cfg, ep)
            rec = results.put(name, {"seed": seed, "scores": chosen, "final_scores": final, "seconds": secs,
                                     "chosen": os.path.relpath(r.policy, run) if r.policy.startswith(run) else "bc",
                                     "curve": [{k: p[k] for k in ("env_steps", "phase", "mean")} for p in r.curve],
                                     "date": time.strftime("%Y-%m-%d")})  # fmt: skip
            print(f"{game} {arm} seed {seed}: {secs} s, chosen {np.mean(rec['scores']):.1f}, "
                  f"final {np.mean(rec['final_scores']):.1f}", flush=True)  # fmt: skip
        # dqfd: the policy the config's finetune.select names (a run recorded under "best" has its
        # final policy's scores too, so the rule applies to older files)
        final_rule = arm == "dqfd" and cfg.finetune.select == "final"
        scores.setdefault(arm, []).append(rec["final_scores"] if final_rule else rec["scores"])
        seconds.setdefault(arm, []).append(rec["seconds"])
        curves.setdefault(arm, []).append(rec["curve"])
        if arm == "dqfd":
            scores.setdefault("dqfd_final", []).append(rec["final_scores"])
    arms = {k: summarise(v, game) for k, v in scores.items()}
    for k, v in seconds.items():
        v = [x for x in v if x is not None]
        arms[k]["wall_s_per_run"] = round(float(np.mean(v))) if v else None
    return {"arms": arms, "curves": curves, **compare(game, arms)}


def report_fingerprints(results: Results, game: str, tag: str, episodes: int, which: str | None) -> list[str]:
    """--report: the BC fingerprints of this config's results to read: `which` None, the one the
    most files share (a tie is refused: --bc says which); "all", every one; else those starting
    with `which`."""
    import glob
    from collections import Counter

    pre = os.path.join(results.folder, f"{game}-")
    found = Counter()
    for p in glob.glob(f"{pre}*-{tag}-bc*-{episodes}ep*.json"):
        found[p[len(pre) :].split(f"-{tag}-bc", 1)[1].split("-", 1)[0]] += 1
    if which == "all":
        chosen = sorted(found)
    elif which:
        chosen = sorted(fp for fp in found if fp.startswith(which))
    else:
        top = [fp for fp, n in found.items() if n == max(found.values())]
        if len(top) > 1:
            raise SystemExit(f"--report: {game}'s results come from BCs {sorted(top)} with as many files each: "
                             "pass --bc all or --bc <one of them>")  # fmt: skip
        chosen = top
    if not chosen:
        raise SystemExit(f"--report: no results for {game} with config tag {tag} and BC {which or 'any'} in {results.folder}")
    return chosen


def plot(games: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(games), figsize=(6 * len(games), 4), dpi=110, squeeze=False)
    for ax, (game, g) in zip(axes[0], games.items()):
        for arm, color in (("dqfd", "#c44e52"), ("scratch", "#8172b2")):
            for i, curve in enumerate(g["curves"].get(arm, [])):
                pts = [p for p in curve if p["phase"] != "bc"]
                ax.plot([p["env_steps"] for p in pts], [p["mean"] for p in pts], marker="o", ms=3, color=color,
                        alpha=0.7, label=arm if i == 0 else None)  # fmt: skip
        for arm, style in (("teacher", ":"), ("bc", "--"), ("random", "-.")):
            if arm in g["arms"]:
                ax.axhline(g["arms"][arm]["mean"], color="gray", ls=style, label=arm)
        ax.set_title(f"{game}: selection-seed curves, one line per seed")
        ax.set_xlabel("online env steps")
        ax.set_ylabel("greedy score")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--games", default=None,
                    help=f"comma-separated: {', '.join(HUMAN_RANDOM)} (default breakout,pong; --quick: breakout)")
    ap.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds per game (arm dqfd)")
    ap.add_argument("--scratch-seeds", type=int, default=1, help="DQN-from-scratch seeds per game")
    ap.add_argument("--episodes", type=int, default=30, help="evaluation episodes per policy")
    ap.add_argument("--steps", type=int, default=None, help="online env steps (default: the config's)")
    ap.add_argument("--set", action="append", default=[], help="a config override for every run")
    ap.add_argument("--keep", default=os.path.join(ROOT, "runs", "beat-teacher"),
                    help="run folders (<game>/bc as in the configs; reused: finished stages are skipped)")
    ap.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results", "beat_teacher"))
    ap.add_argument("--plot", default=None, help="where the curves PNG goes")
    ap.add_argument("--quick", action="store_true", help="tiny budgets, 1 seed, 2 episodes (results not kept)")
    ap.add_argument("--report", action="store_true",
                    help="run nothing: tables and --plot from the result files there are (up to --seeds per game)")
    ap.add_argument("--bc", default=None,
                    help="--report: the BC fingerprint (a prefix) whose runs to read, or 'all' to pool every BC's "
                         "(default: the BC the most result files share)")
    a = ap.parse_args()
    if a.quick:
        a.seeds, a.episodes = 1, 2
    games = [g.strip() for g in (a.games or ("breakout" if a.quick else "breakout,pong")).split(",") if g.strip()]
    bad = [g for g in games if g not in HUMAN_RANDOM]
    if bad:
        raise SystemExit(f"unknown game(s) {bad}: {', '.join(HUMAN_RANDOM)}")
    import ray

    if a.report and a.quick:
        raise SystemExit("--report reads the kept results; --quick keeps none")
    base = tempfile.mkdtemp(prefix="beat-teacher-") if a.quick else a.keep
    results = Results(os.path.join(base, "results") if a.quick else a.results)
    if not a.report:
        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    out: dict = {"benchmark": "beat_teacher", "quick": a.quick, "machine": f"{os.cpu_count()} cpus",
                 "episodes": a.episodes, "seeds": a.seeds}  # fmt: skip
    per = {}
    try:
        for g in games:
            per[g] = run_game(g, a, results, base)
    finally:
        ray.shutdown()
    if a.plot:
        plot(per, a.plot)
        out["plot"] = a.plot
    for g, r in per.items():
        out[g] = r["arms"]
        out.update({k: v for k, v in r.items() if k not in ("arms", "curves")})
    for tail in ("", "_final"):  # the weakest game's figure: the goal holds on every game or not at all
        gains = [out.get(f"gain_vs_bc_se{tail}_{g}") for g in games]
        out[f"gain_vs_bc_se{tail}"] = min((x for x in gains if x is not None), default=None)
    out["seconds"] = round(time.perf_counter() - t0)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
