"""Choosing the fine-tuned policy: greedy episodes on the selection seeds, and `finetune/best.json`.

Every point of fine-tuning's learning curve (the BC weights before any update, after the offline
phase, every `finetune.eval_every_steps` online steps, the final policy) is played greedily for
`finetune.eval_episodes` episodes on the *selection* seeds of `rayapp.envs.seeds`, disjoint from
the *evaluation* seeds `rayapp evaluate` and the report use. The best point so far is written to
`best.json`; a later point replaces it only when its mean score is strictly higher, so a fine-tuned
policy has to beat the BC point (phase "bc") to be chosen. `best.json` records what the choice was
made on:

    {"checkpoint": ".../policies/bc-00000000",
     "metrics": {"eval_score": 3.0, "env_steps": 0, "phase": "bc", "bc": true,
                 "chosen_on": {"purpose": "selection", "mode": "greedy", "epsilon": 0.0,
                               "episodes": 3, "seeds": [200000, 200001, 200002]}}}
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rayapp.config import Config
from rayapp.envs.episodes import play_episodes
from rayapp.envs.seeds import episode_seeds
from rayapp.frames import FrameSpec
from rayapp.models.checkpoint import write_best
from rayapp.rl.dqn_config import eval_tasks

__all__ = ["evaluate_greedy", "BestPolicy"]


def evaluate_greedy(
    policy: str, frames: FrameSpec, cfg: Config, episodes: int, purpose: str = "selection"
) -> list[dict[str, Any]]:
    """Greedy episodes (seed, raw unclipped score, steps, ...) of an exported policy on the seeds
    of `purpose`, played in Ray tasks."""
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
    played = [e for part in ray.get(refs) for e in part]
    return sorted(played, key=lambda e: e["seed"])


class BestPolicy:
    """The best point of the learning curve so far, kept in `<run.dir>/finetune/best.json`."""

    def __init__(self, cfg: Config, curve: list[dict[str, Any]]):
        self.cfg = cfg
        self.mean, self.policy = float("-inf"), ""
        for point in curve:  # a resumed run: the points measured before
            if point.get("scores") and point["mean"] > self.mean:
                self.mean, self.policy = point["mean"], point["policy"]

    def consider(self, point: dict[str, Any]) -> bool:
        """Take `point` (env_steps, phase, mean, scores, seeds, policy) if it beats the best so far."""
        if not point["scores"] or not point["mean"] > self.mean:
            return False
        self.mean, self.policy = point["mean"], point["policy"]
        chosen_on = {"purpose": "selection", "mode": "greedy", "epsilon": self.cfg.eval.epsilon,
                     "episodes": len(point["scores"]), "seeds": list(point.get("seeds", []))}  # fmt: skip
        write_best(self.cfg.run.dir, "finetune", point["policy"],
                   {"eval_score": point["mean"], "env_steps": point["env_steps"], "phase": point["phase"],
                    "bc": point["phase"] == "bc", "chosen_on": chosen_on})  # fmt: skip
        return True

    def unselected(self, final: dict[str, Any]) -> None:
        """No evaluation episodes (`finetune.eval_episodes=0`): the final policy, chosen on nothing."""
        write_best(self.cfg.run.dir, "finetune", final["policy"],
                   {"env_steps": final["env_steps"], "phase": final["phase"], "bc": False, "chosen_on": None})  # fmt: skip
