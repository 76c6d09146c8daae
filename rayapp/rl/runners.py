"""Which env runners are alive: game PCs come and go, and the run says so when they do.

RLlib's env-runner fault tolerance (`restart_failed_env_runners`) marks a runner whose actor died
(its game PC was switched off, the game crashed, the network dropped) unhealthy and samples from
the others; Ray restarts the actor as soon as a node with a free `game_pc` joins, and RLlib's probe
takes it back. `RunnerWatch` reads the healthy count through `EnvRunnerGroup`'s public
`num_healthy_remote_workers()` after every iteration, logs it (`fault/env_runners_healthy`), and
prints a line whenever it changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["RunnerWatch"]


class RunnerWatch:
    def __init__(self, algo, configured: int, say: Callable[[str], None] = print):
        self.algo, self.configured, self.say = algo, configured, say
        self.healthy = configured
        self.changes: list[dict] = []  # {time, healthy}: when runners went away and came back

    def update(self, env_steps: int) -> int:
        if self.configured == 0:
            return 0
        n = int(self.algo.env_runner_group.num_healthy_remote_workers())
        if n != self.healthy:
            went = n < self.healthy
            self.changes.append({"time": time.time(), "healthy": n, "env_steps": env_steps})
            what = "lost" if went else "back"
            self.say(f"finetune: env runners {what}: {n} of {self.configured} healthy at env step {env_steps:,}"
                     + ("; training goes on with the others (RLlib restarts the lost runner when its node returns)"
                        if went and n else ""))  # fmt: skip
            self.healthy = n
        return n
