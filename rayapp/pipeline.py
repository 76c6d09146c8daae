"""`rayapp pipeline`: the stages in order, each skipped when its output already exists."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from rayapp.config import Config
from rayapp.errors import RayappError, StageError
from rayapp.storage import exists, resolve

__all__ = ["run_pipeline", "STAGES"]


def _record_done(cfg: Config) -> bool:
    return exists(resolve(cfg.data_uri).join("dataset.json"))


def _record(cfg: Config) -> None:
    from rayapp.replay.record import record

    print(record(cfg).line())


def _inspect(cfg: Config) -> None:
    from rayapp.replay.inspect import inspect_dataset

    out = resolve(cfg.run.dir).join("inspect", "contact_sheet.png").uri
    report = inspect_dataset(cfg.data_uri, sample=24, out=out, seed=cfg.run.seed)
    print(report.text())
    if not report.ok:
        raise RayappError(f"{len(report.corrupt)} corrupt shard(s) in {report.uri}")


# name -> (run, done?) ; done=None: always runs
STAGES: dict[str, tuple[Callable[[Config], None], Callable[[Config], bool] | None]] = {
    "record": (_record, _record_done),
    "inspect": (_inspect, None),
}


def run_pipeline(cfg: Config, stages: Sequence[str] | None = None, force: bool = False) -> int:
    names = list(stages or STAGES)
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        raise RayappError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
    for name in names:
        run, done = STAGES[name]
        if not force and done is not None and done(cfg):
            print(f"[{name}] output exists, skipping (--force reruns it)", file=sys.stderr)
            continue
        print(f"[{name}] running", file=sys.stderr)
        try:
            run(cfg)
        except RayappError as e:
            raise StageError(
                f"stage '{name}' failed: {e}. Fix it and rerun the same command: finished stages are skipped"
            ) from e
    return 0
