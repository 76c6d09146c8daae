"""`rayapp evaluate --checkpoint ...`: play the game with a trained policy and compare.

The policy plays `eval.episodes` episodes greedily and sampled (a BC policy samples its softmax, a
Q-network from `rayapp finetune` plays epsilon-greedy at `eval.q_epsilon`); the scripted teacher
and a random player play the same episodes (same seeds, same emulator settings, same step cap) in
the same run. The seeds are the *evaluation* seeds of `rayapp.envs.seeds`, never those fine-tuning
chose its best policy on. Episode runners are Ray tasks. Writes to `<run.dir>/eval/`: `eval.json`
(scores, the seeds each player played, what each mode meant, which checkpoint was played),
`scores.png` (a plot) and `gameplay.gif` (the greedy policy's first episode).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rayapp.config import Config
from rayapp.envs.episodes import play_episodes
from rayapp.envs.seeds import describe_seeds, episode_seeds
from rayapp.errors import RayappError
from rayapp.models.agent import mode_label
from rayapp.models.checkpoint import load_policy
from rayapp.runtime import init_ray
from rayapp.storage import resolve, write_bytes_atomic

__all__ = ["evaluate", "EvalReport"]


@dataclass
class EvalReport:
    checkpoint: str
    game: str
    players: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=dict)  # player -> what its mode meant
    checkpoints: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # policy name -> path, stage, phase, env_steps

    def stats(self, name: str) -> dict[str, float]:
        s = np.array([e["score"] for e in self.players[name]], np.float64)
        return {
            "mean": float(s.mean()),
            "std": float(s.std()),
            "min": float(s.min()),
            "max": float(s.max()),
            "episodes": len(s),
        }

    def seeds(self) -> list[int]:
        return sorted({e["seed"] for eps in self.players.values() for e in eps})

    def to_json(self) -> dict[str, Any]:
        out = {"checkpoint": self.checkpoint, "game": self.game, "checkpoints": self.checkpoints,
               "seeds": {"purpose": "evaluation", "seeds": self.seeds()}, "scores": {}, "files": self.files}  # fmt: skip
        for name, eps in self.players.items():
            out["scores"][name] = {
                **self.stats(name),
                "mode": self.modes.get(name, name),
                "per_episode": [e["score"] for e in eps],
                "steps": [e["steps"] for e in eps],
                "seeds": [e["seed"] for e in eps],
            }
        for name in self.players:
            if "/" not in name:
                continue  # baselines
            if "teacher" in self.players:
                t = self.stats("teacher")["mean"]
                out["scores"][name]["vs_teacher"] = self.stats(name)["mean"] / t if t else None
            if "random" in self.players:
                r = self.stats("random")["mean"]
                out["scores"][name]["vs_random"] = self.stats(name)["mean"] / r if r else None
        return out

    def text(self) -> str:
        lines = [
            f"evaluation of {self.checkpoint} on {self.game} (evaluation seeds {describe_seeds(self.seeds())})"
        ]
        for name in self.players:
            s = self.stats(name)
            mode = f"  [{self.modes[name]}]" if self.modes.get(name, name) != name.split("/")[-1] else ""
            lines.append(
                f"  {name:<16} score {s['mean']:7.2f} +- {s['std']:6.2f}  (min {s['min']:g}, max {s['max']:g}, {s['episodes']} episodes){mode}"
            )
        j = self.to_json()["scores"]
        for name in self.players:
            if "vs_teacher" in j[name] or "vs_random" in j[name]:
                vt, vr = j[name].get("vs_teacher"), j[name].get("vs_random")
                lines.append(
                    f"  {name}: {vt:.2f}x the teacher, {vr:.1f}x random"
                    if vt is not None and vr is not None
                    else f"  {name}: -"
                )
        lines += [f"  {k}: {v}" for k, v in self.files.items()]
        return "\n".join(lines)


def _plot(report: EvalReport) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report.players)
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.6), dpi=110)
    colors = {"teacher": "#4c72b0", "random": "#999999"}
    for i, n in enumerate(names):
        s = [e["score"] for e in report.players[n]]
        ax.bar(i, np.mean(s), yerr=np.std(s), color=colors.get(n, "#dd8452"), alpha=0.85, capsize=4)
        ax.scatter(np.full(len(s), i) + np.linspace(-0.15, 0.15, len(s)), s, s=10, color="black", zorder=3)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("episode score")
    ax.set_title(f"{report.game}: {len(report.players[names[0]])} episodes each")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _gif(frames: list[np.ndarray], fps: int) -> bytes:
    import imageio.v3 as iio

    buf = io.BytesIO()
    iio.imwrite(buf, np.stack(frames), extension=".gif", duration=1000 / fps, loop=0)
    return buf.getvalue()


def evaluate(
    cfg: Config, checkpoint: str, out_dir: str | None = None, others: dict[str, str] | None = None
) -> EvalReport:
    """Play `checkpoint` (named "policy") and any `others` (name -> checkpoint, e.g. {"bc": ...})
    in every mode of `eval.modes`, and the baselines, over the same seeds."""
    import ray

    e = cfg.eval
    pol = load_policy(checkpoint)  # a bad path or file fails here, before Ray
    env_cfg = dict(pol.config.get("env", {}))
    if not env_cfg:
        raise RayappError(f"{pol.path}: the checkpoint's config has no env section")
    env_cfg["max_episode_steps"] = e.max_episode_steps
    game = pol.game.get("game", env_cfg.get("game", "?"))
    policies = {"policy": pol}
    for name, path in (others or {}).items():
        other = load_policy(path)
        if other.game.get("game") != game:
            raise RayappError(f"{name} checkpoint {other.path} plays {other.game.get('game')}, not {game}")
        policies[name] = other
    init_ray(cfg.ray)
    seeds = episode_seeds(cfg.run.seed, "evaluation", e.episodes)
    jobs = [(name, m) for name in policies for m in e.modes] + [(b, b) for b in e.baselines]
    chunks = max(1, min(e.episodes, e.workers))
    remote = ray.remote(num_cpus=e.cpus_per_worker)(play_episodes)
    refs = []
    for name, mode in jobs:
        p = policies.get(name)
        for c in range(chunks):
            part = seeds[c::chunks]
            if not part:
                continue
            video = e.video_steps if (name == "policy" and mode == e.modes[0] and c == 0) else 0
            args = (
                ("policy", mode, part, env_cfg, p.path, p.frames.to_json())
                if p
                else (name, name, part, env_cfg, None, None)
            )
            refs.append(
                (f"{name}/{mode}" if p else name, remote.remote(*args, e.epsilon, video, e.q_epsilon))
            )
    report = EvalReport(pol.path, game)
    for name, p in policies.items():
        report.checkpoints[name] = {
            "path": p.path,
            **{k: p.meta.get(k) for k in ("stage", "phase", "env_steps")},
        }
        for mode in e.modes:
            report.modes[f"{name}/{mode}"] = mode_label(p, mode, e.epsilon, e.q_epsilon)
    for name, ref in refs:
        report.players.setdefault(name, []).extend(ray.get(ref))
    for eps in report.players.values():
        eps.sort(key=lambda x: x["seed"])
    folder = resolve(out_dir or resolve(cfg.run.dir).join("eval").uri)
    video = next(
        (
            ep["video"]
            for name, eps in report.players.items()
            if name.startswith("policy")
            for ep in eps
            if ep["video"]
        ),
        None,
    )
    if video:
        write_bytes_atomic(folder.join("gameplay.gif"), _gif(video, e.video_fps))
        report.files["video"] = folder.join("gameplay.gif").uri
    for eps in report.players.values():
        for ep in eps:
            ep.pop("video", None)
    write_bytes_atomic(folder.join("scores.png"), _plot(report))
    report.files["plot"] = folder.join("scores.png").uri
    report.files["report"] = folder.join("eval.json").uri
    write_bytes_atomic(folder.join("eval.json"), (json.dumps(report.to_json(), indent=2) + "\n").encode())
    return report
