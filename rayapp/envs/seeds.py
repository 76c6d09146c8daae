"""Which emulator seeds each kind of scored play uses: one place, disjoint ranges.

Every episode rayapp plays for a score starts from `env.reset(seed=s)`, with

    s = run.seed * 1_000_000 + OFFSETS[purpose] + i        (0 <= i < 100_000)

| purpose        | offset  | played by                                                              |
|----------------|---------|------------------------------------------------------------------------|
| `"evaluation"` | 100_000 | `rayapp evaluate`, the pipeline's evaluate stage (what the report shows), benchmarks' final scores |
| `"selection"`  | 200_000 | fine-tuning's learning curve, hence the choice of `finetune/best.json` (and a sweep's metric) |

A policy is therefore chosen on episodes that are never the ones it is reported on: the score in
the report is not inflated by picking the best of several checkpoints on the same episodes. The
purpose of a seed is `(s % 1_000_000) // 100_000`, so the ranges stay disjoint for any two
`run.seed` values too. Recording seeds its collectors with `run.seed * 10_000 + k` (k counts the
collectors started), which never reaches these ranges within a run.
"""

from __future__ import annotations

from rayapp.errors import ConfigError

__all__ = ["OFFSETS", "PER_PURPOSE", "episode_seeds", "seed_purpose", "describe_seeds"]

BLOCK = 1_000_000  # seeds per run.seed
PER_PURPOSE = 100_000  # episodes one purpose can play
OFFSETS = {"evaluation": 100_000, "selection": 200_000}


def episode_seeds(run_seed: int, purpose: str, episodes: int) -> list[int]:
    """The seeds of `episodes` episodes played for `purpose` ("evaluation" or "selection")."""
    if purpose not in OFFSETS:
        raise ConfigError(f"unknown seed purpose {purpose!r}; purposes: {', '.join(OFFSETS)}")
    if run_seed < 0:
        raise ConfigError(f"run.seed must be >= 0 (emulator seeds are non-negative), got {run_seed}")
    if not 0 <= episodes <= PER_PURPOSE:
        raise ConfigError(
            f"{purpose}: at most {PER_PURPOSE:,} episodes have their own seeds, asked for {episodes:,}"
        )
    base = run_seed * BLOCK + OFFSETS[purpose]
    return [base + i for i in range(episodes)]


def seed_purpose(seed: int) -> str | None:
    """The purpose whose range holds `seed` (None: none of them, e.g. a recording seed)."""
    offset = (seed % BLOCK) // PER_PURPOSE * PER_PURPOSE
    return next((p for p, o in OFFSETS.items() if o == offset), None)


def describe_seeds(seeds: list[int]) -> str:
    """'200000-200002' for consecutive seeds, else the list; '-' for none."""
    if not seeds:
        return "-"
    s = sorted(seeds)
    if s == list(range(s[0], s[0] + len(s))):
        return str(s[0]) if len(s) == 1 else f"{s[0]}-{s[-1]}"
    return ", ".join(map(str, s))
