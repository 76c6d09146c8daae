"""Game PCs that come and go: a real multi-node Ray cluster on this machine, online fine-tuning on
the screen of every game PC, one PC switched off mid-run and back again; how long training stalls.

The cluster: `ray start --head` plus N worker nodes (`ray start --address=... --resources=
'{"game_pc": 1}'`), each worker with its own Xvfb display and `rayapp arcade` window, as a game PC
with its own screen would be. `rayapp finetune` (configs/arcade-screen.yaml, env.backend=screen,
one env runner per game PC) trains from all the windows; the harness kills one worker node (its
raylet by pid, then the rest of its processes: the PC switched off), waits, starts it again, and
reads from `finetune/metrics.csv` when the runner count dropped and came back and how the env-step
rate moved. The test bed for tests/test_game_pcs.py too (`GamePcCluster`).

    python benchmarks/game_pcs.py --bc-run RUN          # 2 game PCs, 3,000 online steps
    python benchmarks/game_pcs.py --bc-run RUN --quick  # 2 game PCs, 900 steps: about 2 minutes, not 1
                                                        # (Ray takes ~15 s to call a node lost and
                                                        # ~20 s to bring its runner back)

Stall: the longest gap between two training iterations while the PC is away and in the minute
after it is started again, against the median gap; the env-step rate with both PCs and with one. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, ".."))
PY = sys.executable
RAY = os.path.join(os.path.dirname(PY), "ray")
CONFIG = os.path.join(ROOT, "configs", "arcade-screen.yaml")
TITLE = "rayapp arcade: Breakout"

__all__ = ["GamePcCluster", "finetune_args", "metrics_rows"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ports() -> list[str]:
    # every node its own agent ports: this machine may already run a Ray (the test session's)
    return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]  # fmt: skip


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
            break
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # what outlived it in its group (raylet, workers)
    except ProcessLookupError:
        pass


class GamePc:
    """One worker node with its own X display and arcade window."""

    def __init__(self, cluster: GamePcCluster, index: int):
        self.cluster, self.index = cluster, index
        r, w = os.pipe()
        self.xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                                     pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        os.close(w)
        with os.fdopen(r) as f:
            self.display = ":" + f.readline().strip()
        self.arcade: subprocess.Popen | None = None
        self.start_game()
        self.node: subprocess.Popen | None = None
        self.start()

    def start_game(self) -> None:
        env = dict(os.environ, DISPLAY=self.display, PYTHONPATH=ROOT, SDL_AUDIODRIVER="dummy")
        self.arcade = subprocess.Popen([PY, "-m", "rayapp.cli", "arcade", "--game", "Breakout"], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        sys.path.insert(0, ROOT)
        from rayapp.envs.screen import WindowFinder
        from rayapp.errors import CaptureError

        finder, deadline = WindowFinder(self.display), time.monotonic() + 60
        try:
            while True:
                try:
                    finder.find(TITLE)
                    return
                except CaptureError:
                    if time.monotonic() > deadline or self.arcade.poll() is not None:
                        raise RuntimeError(f"no arcade window on {self.display}") from None
                    time.sleep(0.1)
        finally:
            finder.close()

    def stop_game(self) -> None:
        """The game crashed or was closed: the PC is there, its window is not."""
        if self.arcade is not None:
            _stop_group(self.arcade)
            self.arcade = None

    def start(self) -> None:
        env = dict(self.cluster.env, DISPLAY=self.display)
        log = open(os.path.join(self.cluster.tmp, f"pc{self.index}.log"), "a")
        self.node = subprocess.Popen(
            [RAY, "start", "--block", f"--address=127.0.0.1:{self.cluster.port}", "--num-cpus=1",
             '--resources={"game_pc": 1}', *_ports(), "--disable-usage-stats"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def raylet_pid(self) -> int | None:
        """The raylet of this node: the process named raylet in its `ray start` process group (/proc)."""
        for pid in (int(d) for d in os.listdir("/proc") if d.isdigit()):
            try:
                with open(f"/proc/{pid}/comm") as f:
                    name = f.read().strip()
                if name == "raylet" and os.getpgid(pid) == self.node.pid:
                    return pid
            except (OSError, ProcessLookupError):
                continue
        return None

    def switch_off(self) -> None:
        """The PC goes away: its raylet killed by pid, then everything else of that node."""
        pid = self.raylet_pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
        _stop_group(self.node)
        self.node = None

    def close(self) -> None:
        if self.node is not None:
            _stop_group(self.node)
        self.stop_game()
        self.xvfb.terminate()
        self.xvfb.wait(timeout=10)


class GamePcCluster:
    """A head (no game_pc) and `pcs` game PCs; `.address`, `.env` (the token every client needs)."""

    def __init__(self, pcs: int = 2, head_cpus: int = 3):
        self.tmp = tempfile.mkdtemp(prefix="gp", dir="/tmp")  # short: Ray's socket paths
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16), RAY_USAGE_STATS_ENABLED="0")
        self.env.pop("RAY_ADDRESS", None)
        log = open(os.path.join(self.tmp, "head.log"), "w")
        self.head = subprocess.Popen(
            [RAY, "start", "--head", "--block", f"--port={self.port}", f"--num-cpus={head_cpus}", "--include-dashboard=false",
             f"--temp-dir={self.tmp}", *_ports(), "--disable-usage-stats"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.pcs: list[GamePc] = []
        try:
            self.wait_for(0)
            self.pcs = [GamePc(self, i) for i in range(pcs)]
            self.wait_for(pcs)
        except RuntimeError as e:
            tails = self.log_tails()  # close() removes the folder: keep what the nodes said
            self.close()
            raise RuntimeError(f"{e}\n{tails}") from None
        except BaseException:
            self.close()
            raise

    def log_tails(self, lines: int = 15) -> str:
        out = []
        for name in sorted(os.listdir(self.tmp)):
            if name.endswith(".log"):
                with open(os.path.join(self.tmp, name), errors="replace") as f:
                    out.append(f"--- {name}\n" + "".join(f.readlines()[-lines:]))
        return "\n".join(out)

    def game_pcs(self) -> int:
        """Alive nodes that advertise game_pc (asked through `ray status`-like state: a client call)."""
        code = (f"import ray, json; ray.init(address='{self.address}', logging_level='ERROR', log_to_driver=False); "
                "print(json.dumps(sum(1 for n in ray.nodes() if n['Alive'] and n['Resources'].get('game_pc'))))")  # fmt: skip
        r = subprocess.run([PY, "-c", code], env=self.env, capture_output=True, text=True, timeout=120)
        return int(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 and r.stdout.strip() else -1

    def wait_for(self, pcs: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while self.game_pcs() != pcs:
            if self.head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not reach {pcs} game PCs; see {self.tmp}/*.log")
            time.sleep(1)

    def close(self) -> None:
        for pc in self.pcs:
            pc.close()
        _stop_group(self.head)
        shutil.rmtree(self.tmp, ignore_errors=True)


def finetune_args(cluster: GamePcCluster, run_dir: str, bc_run: str, steps: int, runners: int, *extra: str) -> list[str]:
    sets = [f"ray.address={cluster.address}", f"run.dir={run_dir}", f"finetune.init_checkpoint={bc_run}",
            f"finetune.num_env_runners={runners}", f"finetune.online_steps={steps}", "finetune.offline_updates=0",
            "finetune.demo_ratio=0", "finetune.eval_episodes=0", "finetune.learning_starts=200",
            "finetune.steps_per_iteration=64", "finetune.checkpoint_every_steps=100000", "env.fps=30",
            # every PC runs its own game: no shared game-API address here, so the episodes are cut at 100 steps
            "env.reward=none", "env.max_episode_steps=100", *extra]  # fmt: skip
    args = [PY, "-m", "rayapp.cli", "finetune", "--config", CONFIG]
    for s in sets:
        args += ["--set", s]
    return args


def metrics_rows(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "finetune", "metrics.csv")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [r for r in csv.DictReader(f) if r.get("phase") == "online"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bc-run", required=True, help="a run folder with pretrain/ (its BC policy starts fine-tuning)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--pcs", type=int, default=2)
    a = ap.parse_args()
    steps = 900 if a.quick else 3000
    cluster = GamePcCluster(a.pcs)
    out: dict = {"benchmark": "game_pcs", "quick": a.quick, "pcs": a.pcs, "steps": steps}
    try:
        run = os.path.join(cluster.tmp, "run")
        log = open(os.path.join(cluster.tmp, "finetune.log"), "w")
        env = dict(cluster.env, PYTHONPATH=ROOT)
        t0 = time.time()
        proc = subprocess.Popen(finetune_args(cluster, run, a.bc_run, steps, a.pcs), env=env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=ROOT)  # fmt: skip
        events = {}
        while proc.poll() is None:
            rows = metrics_rows(run)
            done = int(float(rows[-1]["step"])) if rows else 0
            if "off" not in events and done >= steps // 3:
                events["off"] = time.time()
                cluster.pcs[-1].switch_off()
            if "off" in events and "on" not in events and time.time() - events["off"] > 45:
                events["on"] = time.time()
                cluster.pcs[-1].start()
            time.sleep(0.5)
        out["rc"] = proc.returncode
        out["seconds"] = round(time.time() - t0, 1)
        out.update(stalls(run, events))
    finally:
        cluster.close()
    print(json.dumps(out))


def stalls(run: str, events: dict) -> dict:
    """Gaps between iterations (metrics rows' wall times) around the loss and the return."""
    rows = metrics_rows(run)
    times = [float(r["wall_time"]) for r in rows]
    healthy = [int(float(r.get("fault/env_runners_healthy") or 0)) for r in rows]
    gaps = [b - a for a, b in zip(times, times[1:])]
    out: dict = {"iterations": len(rows), "median_gap_s": round(sorted(gaps)[len(gaps) // 2], 2) if gaps else None}
    # the longest gap between two iterations that overlaps the PC's absence (from switching it off
    # to starting it again), and the one that overlaps the minute after it started again
    windows = {"off": (events.get("off"), events.get("on", float("inf"))), "on": (events.get("on"), events.get("on", 0) + 60)}
    for name, (start, end) in windows.items():
        if start is not None:
            near = [g for a, b, g in zip(times, times[1:], gaps) if b > start and a < end]
            out[f"max_gap_after_{name}_s"] = round(max(near), 2) if near else None
    steps = [int(float(r["step"])) for r in rows]
    for name, sel in (("two_pcs", lambda t: t < events.get("off", float("inf"))),
                      ("one_pc", lambda t: events.get("off", float("inf")) < t < events.get("on", 0))):  # fmt: skip
        pts = [(t, s) for t, s in zip(times, steps) if sel(t)]
        if len(pts) > 2:
            out[f"steps_per_s_{name}"] = round((pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0]), 2)
    lost = next((t for t, h, p in zip(times[1:], healthy[1:], healthy) if h < p), None)
    back = next((t for t, h, p in zip(times[1:], healthy[1:], healthy) if lost and t > lost and h > p), None)
    out["runner_lost_after_s"] = round(lost - events["off"], 1) if lost and "off" in events else None
    out["runner_back_after_s"] = round(back - events["on"], 1) if back and "on" in events else None
    out["healthy"] = healthy
    return out


if __name__ == "__main__":
    main()
