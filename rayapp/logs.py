"""A console a user can read: one line per event, and no warnings a user cannot act on.

Ray and RLlib log a few messages on every run that say nothing about the user's run (RLlib builds a
deprecated `RLModuleConfig` inside `RLModule.__init__` itself; "you are running DQN on the new API
stack"; Ray Data's "progress bars disabled" and per-epoch "execution finished" lines; Tune's
"install gputil"; the token-authentication notice that every Ray 2.60 cluster prints). `install()`
drops exactly those, by logger and message, in the driver (the CLI and `init_ray` call it); what
workers log goes to the command's log file, not the console (`rayapp.console`). Everything else, warnings and
errors included, passes through unchanged; `RAYAPP_VERBOSE=1` turns the filter off.
"""

from __future__ import annotations

import logging
import os
import re

__all__ = ["QUIET", "install", "UnactionableFilter"]

# (logger name, message pattern): matched with re.search against the formatted message
QUIET: list[tuple[str, str]] = [
    ("ray._common.deprecation", r"RLModule\(config=\[RLModuleConfig object\]\)"),
    ("ray.rllib.algorithms.algorithm_config", r"You are running \w+ on the new API stack"),
    ("ray.data._internal.progress", r"Progress bars (for operators )?disabled"),
    ("ray.data._internal.execution.streaming_executor", r"Dataset \S+ execution finished in"),
    ("ray.tune.utils.util", r"Install gputil"),
    ("ray._private.authentication.authentication_token_setup", r"Token authentication is enabled"),
]


class UnactionableFilter(logging.Filter):
    def __init__(self, patterns: list[str]):
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to drop
            return True
        return not any(p.search(msg) for p in self.patterns)


def install() -> None:
    """Attach the filters to their loggers (idempotent)."""
    if os.environ.get("RAYAPP_VERBOSE") == "1":
        return
    by_logger: dict[str, list[str]] = {}
    for name, pattern in QUIET:
        by_logger.setdefault(name, []).append(pattern)
    for name, patterns in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, UnactionableFilter) for f in logger.filters):
            logger.addFilter(UnactionableFilter(patterns))
