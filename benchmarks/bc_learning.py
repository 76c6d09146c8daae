"""Does behaviour cloning learn to play? Record the quickstart's teacher dataset, pretrain on it,
then play: the BC policy (greedy and sampled), the teacher and random, the same episodes each.

Goal (Breakout): BC greedy >= 0.5x the teacher's mean score and >= 5x random, over >= 10 episodes.

    python benchmarks/bc_learning.py            # the quickstart's settings (about 10 minutes here)
    python benchmarks/bc_learning.py --quick    # tiny: exercises the path, the scores mean nothing

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = os.path.join(os.path.dirname(__file__), "..")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "quickstart.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--run-dir", default=None, help="keep the outputs here (default: a temporary folder)")
    a = ap.parse_args()
    from rayapp.config import load_config
    from rayapp.evaluate import evaluate
    from rayapp.record import record
    from rayapp.train.bc import pretrain

    run = a.run_dir or tempfile.mkdtemp(prefix="bc-learning-")
    sets = [f"run.dir={run}", *a.overrides]
    if a.quick:
        sets += [
            "record.episodes=4",
            "env.max_episode_steps=300",
            "pretrain.epochs=1",
            "eval.episodes=2",
            "eval.max_episode_steps=300",
        ]
    cfg = load_config(a.config, sets)
    t0 = time.perf_counter()
    rec = record(cfg, show_progress=False)
    t1 = time.perf_counter()
    bc = pretrain(cfg)
    t2 = time.perf_counter()
    rep = evaluate(cfg, bc.checkpoint)
    t3 = time.perf_counter()
    scores = rep.to_json()["scores"]
    greedy, teacher, rnd = (
        scores["policy/greedy"]["mean"],
        scores["teacher"]["mean"],
        scores["random"]["mean"],
    )
    out = {
        "benchmark": "bc_learning",
        "quick": a.quick,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "game": rep.game,
        "dataset_steps": rec.steps,
        "dataset_episodes": len(rec.episodes),
        "epochs": cfg.pretrain.epochs,
        "val_accuracy": bc.metrics.get("val/accuracy"),
        "val_balanced_accuracy": bc.metrics.get("val/balanced_accuracy"),
        "eval_episodes": cfg.eval.episodes,
        "bc_greedy": greedy,
        "bc_greedy_std": scores["policy/greedy"]["std"],
        "bc_sampled": scores.get("policy/sampled", {}).get("mean"),
        "teacher": teacher,
        "teacher_std": scores["teacher"]["std"],
        "random": rnd,
        "bc_vs_teacher": round(greedy / teacher, 3) if teacher else None,
        "bc_vs_random": round(greedy / max(rnd, 1e-9), 1),
        "goal": "bc_vs_teacher >= 0.5 and bc_vs_random >= 5",
        "seconds": {"record": round(t1 - t0), "pretrain": round(t2 - t1), "evaluate": round(t3 - t2)},
        "run_dir": run,
    }
    print(rep.text(), file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
