"""The whole smoke pipeline as a user runs it: `rayapp pipeline` in its own process, starting its own
Ray with 2 CPUs (what the quickstart gets on a 2-core laptop), so resource starvation between
stages shows up here; and a console a user can read (one line per event, no un-actionable
warnings)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter

import pytest
from conftest import SMOKE

NOISE = [
    r"RLModuleConfig object",
    r"on the new API stack",
    r"Progress bars disabled",
    r"execution finished in",
    r"Install gputil",
]


@pytest.mark.own_ray
def test_smoke_pipeline_end_to_end_on_two_cpus(tmp_path):
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    run = tmp_path / "run"
    p = subprocess.run(
        [sys.executable, "-m", "rayapp.cli", "pipeline", "--config", SMOKE, "--set", f"run.dir={run}",
         "--set", "ray.num_cpus=2", "--set", "ray.dashboard=false"],
        capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path,
    )  # fmt: skip
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    for stage in ("record", "pretrain", "finetune", "evaluate", "report"):
        assert f"[{stage}] done" in p.stderr, out[-4000:]
    assert (run / "report.md").exists()
    scores = json.loads((run / "eval" / "eval.json").read_text())["scores"]
    assert {"teacher", "random"} <= set(scores) and any("/" in k for k in scores)

    # one line per event: Ray Train's print patch used to print every worker progress line twice
    lines = [re.sub(r"^(\x1b\[\d+m)?\([^)]*pid=\d+[^)]*\)(\x1b\[0m)?\s*", "", ln) for ln in out.splitlines()]
    progress = Counter(
        ln for ln in lines if re.match(r"(pretrain epoch|finetune (offline|online)|record):", ln)
    )
    assert progress, out[-4000:]
    doubled = {ln: n for ln, n in progress.items() if n > 1}
    assert not doubled, doubled
    for pattern in NOISE:
        hits = [ln for ln in lines if re.search(pattern, ln)]
        assert not hits, f"un-actionable message on the console: {hits[:2]}"
