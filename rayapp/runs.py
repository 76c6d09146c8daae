"""The run folder (`run.dir`): where a stage writes its resolved config, checkpoints, metrics and reports."""

from __future__ import annotations

from rayapp.config import Config, dump_config
from rayapp.storage import resolve, write_bytes_atomic

__all__ = ["save_resolved_config"]


def save_resolved_config(cfg: Config, stage: str) -> str:
    """Write `<run.dir>/config.<stage>.yaml`: the full tree this stage ran with."""
    loc = resolve(cfg.run.dir).join(f"config.{stage}.yaml")
    write_bytes_atomic(
        loc, dump_config(cfg, f"resolved config of `rayapp {stage}`; rerun with --config {loc.uri}").encode()
    )
    return loc.uri
