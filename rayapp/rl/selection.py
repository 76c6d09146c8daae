"""Choosing the fine-tuned policy: `finetune/best.json` from greedy episodes on the selection seeds.

Every point of fine-tuning's learning curve (the BC weights before any update, after the offline
phase, every `finetune.eval_every_steps` online steps, the final policy) is played greedily for
`finetune.eval_episodes` episodes on the *selection* seeds of `rayapp.envs.seeds`
(`rayapp.rl.finetune.evaluate_greedy`), disjoint from
the *evaluation* seeds `rayapp evaluate` and the report use. The best point so far is written to
`best.json`; a later point replaces it only when its mean score is strictly higher, so a fine-tuned
policy has to beat the BC point (phase "bc") to be chosen. With `finetune.select: final` the run's
last policy is named at the end instead (during the run `best.json` follows the best point, for a
player following it). `best.json` records what the choice was made on:

    {"checkpoint": ".../policies/bc-00000000",
     "metrics": {"eval_score": 3.0, "env_steps": 0, "phase": "bc", "bc": true,
                 "chosen_on": {"purpose": "selection", "mode": "greedy", "epsilon": 0.0,
                               "episodes": 3, "seeds": [200000, 200001, 200002]}}}
"""

from __future__ import annotations

from typing import Any

from rayapp.config import Config
from rayapp.models.checkpoint import write_best

__all__ = ["BestPolicy"]


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
        """The final policy, chosen on nothing: `finetune.select: final`, or no evaluation episodes
        (`finetune.eval_episodes=0`). Its selection-seed score, when it has one, is recorded."""
        self.policy = final["policy"]
        metrics = {"env_steps": final["env_steps"], "phase": final["phase"], "bc": final["phase"] == "bc",
                   "chosen_on": None, "select": self.cfg.finetune.select}  # fmt: skip
        if final.get("scores"):
            metrics["final_score"] = final["mean"]  # on the selection seeds; not what chose it
        write_best(self.cfg.run.dir, "finetune", final["policy"], metrics)
