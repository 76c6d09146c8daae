"""`rayapp pipeline`: record -> pretrain -> finetune -> evaluate -> report, in one run folder.

Each stage is skipped when its output exists (rerun the same command after a failure and the
finished stages are not redone); `--stages` runs some of them, `--force` reruns them. Every stage
is also its own command (`rayapp record`, `rayapp pretrain`, ...).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

from rayapp.config import Config
from rayapp.errors import RayappError, StageError
from rayapp.storage import exists, resolve

__all__ = ["run_pipeline", "STAGES"]


def _run(cfg: Config):
    return resolve(cfg.run.dir)


def _record(cfg: Config) -> None:
    from rayapp.record import record

    print(record(cfg).line())


def _record_done(cfg: Config) -> bool:
    from rayapp.replay.reader import ReplayDataset

    loc = resolve(cfg.data_uri)
    return exists(loc.join("dataset.json")) and bool(ReplayDataset(loc).shards)


def _pretrain(cfg: Config) -> None:
    from rayapp.train.bc import pretrain

    r = pretrain(cfg)
    print(
        f"pretrain: best checkpoint {r.checkpoint} (epoch {r.metrics.get('epoch')}, val accuracy {r.metrics.get('val/accuracy', float('nan')):.3f})"
    )


def _finetune(cfg: Config) -> None:
    from rayapp.rl.finetune import finetune

    r = finetune(cfg)
    print(f"finetune: best policy {r.policy}")


def _evaluate(cfg: Config) -> None:
    from rayapp.evaluate import evaluate
    from rayapp.models.checkpoint import resolve_checkpoint

    agent = resolve_checkpoint(cfg.run.dir)  # the fine-tuned policy if there is one, else BC
    others = {}
    if exists(_run(cfg).join("finetune", "best.json")):
        others["bc"] = resolve_checkpoint(cfg.run.dir, stages=("pretrain",))
    print(evaluate(cfg, agent, others=others).text())


def _report(cfg: Config) -> None:
    from rayapp.report import write_report

    print(f"report: {write_report(cfg.run.dir)}")


# name -> (run, done?); done None: always runs
STAGES: dict[str, tuple[Callable[[Config], None], Callable[[Config], bool] | None]] = {
    "record": (_record, _record_done),
    "pretrain": (_pretrain, lambda c: exists(_run(c).join("pretrain", "best.json"))),
    "finetune": (_finetune, lambda c: exists(_run(c).join("finetune", "result.json"))),
    "evaluate": (_evaluate, lambda c: exists(_run(c).join("eval", "eval.json"))),
    "report": (_report, None),
}


def run_pipeline(cfg: Config, stages: Sequence[str] | None = None, force: bool = False) -> int:
    # `--stages record pretrain` or `--stages record,pretrain`
    names = [n for s in (stages or STAGES) for n in s.split(",") if n]
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        raise RayappError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
    t_all = time.perf_counter()
    for name in names:
        run, done = STAGES[name]
        if not force and done is not None and done(cfg):
            print(
                f"[{name}] output exists in {cfg.run.dir}, skipping (--force reruns it)",
                file=sys.stderr,
                flush=True,
            )
            continue
        print(f"[{name}] running", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            run(cfg)
        except RayappError as e:
            raise StageError(
                f"stage '{name}' failed: {e}. Fix it and rerun the same command: finished stages are skipped"
                + (
                    ", and pretrain/finetune resume from their checkpoints"
                    if name in ("pretrain", "finetune")
                    else ""
                )
            ) from e
        print(f"[{name}] done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print(
        f"pipeline finished in {time.perf_counter() - t_all:.0f} s: {cfg.run.dir}/report.md",
        file=sys.stderr,
        flush=True,
    )
    return 0
