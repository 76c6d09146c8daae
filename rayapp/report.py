"""`<run.dir>/report.md`: what a run did, to look at before reading. Scores of the teacher, random,
BC and fine-tuned agents, which checkpoint was chosen and on what, learning curves, the action
confusion, and the gameplay GIF. Scores come from `eval/eval.json` (the evaluation seeds); the
choice of the fine-tuned policy from `finetune/best.json` (the selection seeds): see
`rayapp.envs.seeds`."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np

from rayapp.envs.seeds import describe_seeds
from rayapp.storage import Location, exists, read_bytes, resolve, write_bytes_atomic

__all__ = ["write_report", "BC_WON"]

BC_WON = "BC (no fine-tuned policy beat it)"


def _json(loc: Location) -> Any:
    return json.loads(read_bytes(loc)) if exists(loc) else None


def _csv(loc: Location) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(read_bytes(loc).decode()))) if exists(loc) else []


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _pretrain_plot(rows: list[dict[str, str]]) -> bytes:
    import matplotlib.pyplot as plt

    ep = [_num(r["epoch"]) for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=110)
    a.plot(ep, [_num(r.get("train/loss")) for r in rows], marker="o", label="train")
    a.plot(ep, [_num(r.get("val/loss")) for r in rows], marker="o", label="validation")
    a.set_xlabel("epoch")
    a.set_ylabel("cross-entropy")
    a.legend()
    for key, label in (
        ("train/accuracy", "train accuracy"),
        ("val/accuracy", "val accuracy"),
        ("val/balanced_accuracy", "val balanced accuracy"),
    ):
        b.plot(ep, [_num(r.get(key)) for r in rows], marker="o", label=label)
    b.set_xlabel("epoch")
    b.set_ylim(0, 1)
    b.legend()
    fig.suptitle("behaviour cloning")
    return _png(fig)


def _confusion_plot(conf: np.ndarray, labels: list[str]) -> bytes:
    import matplotlib.pyplot as plt

    norm = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(3.6 + 0.3 * len(labels), 3.2 + 0.3 * len(labels)), dpi=110)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                f"{conf[i, j]}",
                ha="center",
                va="center",
                color="white" if norm[i, j] > 0.5 else "black",
                fontsize=8,
            )
    ax.set_xticks(range(len(labels)), labels, rotation=45)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("demonstrated")
    ax.set_title("BC action confusion (validation)")
    return _png(fig)


def _finetune_plot(curve: list[dict[str, Any]], rows: list[dict[str, str]], bc: float | None) -> bytes:
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=110)
    pts = [p for p in curve if np.isfinite(_num(p.get("mean")))]
    if pts:
        x = [p["env_steps"] for p in pts]
        m = np.array([p["mean"] for p in pts])
        sd = np.array([p["std"] for p in pts])
        a.plot(x, m, marker="o", label="fine-tuned (greedy)")
        a.fill_between(x, m - sd, m + sd, alpha=0.2)
    if bc is not None:
        a.axhline(bc, ls="--", color="gray", label="BC")
    a.set_xlabel("online env steps")
    a.set_ylabel("score")
    a.legend()
    online = [r for r in rows if r.get("phase") == "online" and np.isfinite(_num(r.get("losses/td_loss")))]
    b.plot([_num(r["step"]) for r in online], [_num(r["losses/td_loss"]) for r in online], label="TD loss")
    b.plot(
        [_num(r["step"]) for r in online],
        [_num(r.get("losses/margin_loss")) for r in online],
        label="margin loss",
    )
    b.set_xlabel("online env steps")
    b.legend()
    fig.suptitle("DQN fine-tuning")
    return _png(fig)


def _agent_name(checkpoint: dict[str, Any] | None, default: str) -> str:
    """What a played checkpoint is: BC, the BC point of fine-tuning that nothing beat, or fine-tuned."""
    if not checkpoint:
        return default
    if checkpoint.get("stage") == "pretrain":
        return "BC agent"
    if checkpoint.get("stage") == "finetune":
        return BC_WON if checkpoint.get("phase") == "bc" else "fine-tuned agent"
    return default


def _player_name(name: str, score: dict[str, Any], checkpoints: dict[str, Any]) -> str:
    if "/" not in name:
        return {"teacher": "scripted teacher", "random": "random"}.get(name, name)
    who, mode = name.split("/", 1)
    agent = _agent_name(checkpoints.get(who), {"policy": "fine-tuned agent", "bc": "BC agent"}.get(who, who))
    label = score.get("mode", mode)
    return agent if label == "greedy" else f"{agent}, {label}"


def _older_eval(ev: dict[str, Any], best: dict[str, Any] | None) -> dict[str, Any]:
    """An eval.json of an earlier rayapp version names only the path it played: its phase from best.json."""
    if best and best.get("checkpoint") == ev.get("checkpoint"):
        return {"policy": {"stage": "finetune", "phase": best.get("metrics", {}).get("phase")}}
    return {}


def _choice(best: dict[str, Any], ev: dict[str, Any] | None) -> list[str]:
    """Which checkpoint fine-tuning chose, and on which episodes."""
    m = best.get("metrics", {})
    what = BC_WON if m.get("phase") == "bc" else "fine-tuned agent"
    lines = ["### Chosen policy", "",
             f"**{what}**: `{best.get('checkpoint')}` (phase {m.get('phase')}, env step {m.get('env_steps', 0):,})."]  # fmt: skip
    on = m.get("chosen_on")
    if on:
        lines.append(
            f"Chosen on its greedy score {_num(m.get('eval_score')):.1f} over {on['episodes']} episode{'s' if on['episodes'] != 1 else ''}, "
            f"{on['purpose']} seeds {describe_seeds(on['seeds'])}."
        )
    elif m.get("select") == "final":
        lines.append(
            "The final policy (`finetune.select: final`), chosen on no episodes"
            + (f"; its greedy score on the selection seeds {_num(m['final_score']):.1f}." if "final_score" in m else ".")
        )
    elif "eval_score" in m:  # a best.json of an earlier rayapp version
        lines.append(f"Chosen on its greedy score {_num(m['eval_score']):.1f} (seeds not recorded).")
    else:
        lines.append("Not chosen on any episodes (`finetune.eval_episodes=0`): the final policy.")
    if ev:
        seeds = sorted({s for sc in ev["scores"].values() for s in sc.get("seeds", [])})
        if seeds:
            overlap = sorted(set(seeds) & set((on or {}).get("seeds", [])))
            lines.append(
                f"The scores above are on the evaluation seeds {describe_seeds(seeds)}"
                + (
                    f", which overlap the selection seeds at {describe_seeds(overlap)}."
                    if overlap
                    else ", not those it was chosen on."
                )
            )
    return lines + [""]


def write_report(run_dir: str) -> str:
    """Write `<run.dir>/report.md` (and its plots) from whatever stages have run."""
    import matplotlib

    matplotlib.use("Agg")
    run = resolve(run_dir)
    lines = ["# rayapp run report", "", f"Run folder: `{run.uri}`", ""]
    ev = _json(run.join("eval", "eval.json"))
    if ev:
        lines += [
            f"## Scores ({ev['game']}, greedy unless noted)",
            "",
            "| player | mean | std | min | max | episodes |",
            "|---|---|---|---|---|---|",
        ]
        checkpoints = ev.get("checkpoints") or _older_eval(ev, _json(run.join("finetune", "best.json")))
        for name, s in ev["scores"].items():
            lines.append(
                f"| {_player_name(name, s, checkpoints)} | {s['mean']:.1f} | {s['std']:.1f} | {s['min']:g} | {s['max']:g} | {s['episodes']} |"
            )
        seeds = sorted({x for sc in ev["scores"].values() for x in sc.get("seeds", [])})
        if seeds:
            lines += ["", f"Every player played the evaluation seeds {describe_seeds(seeds)}."]
        pol = ev["scores"].get("policy/greedy")
        if pol and pol.get("vs_random") is not None:
            lines += [
                "",
                f"{_player_name('policy/greedy', pol, checkpoints)}: {pol['vs_teacher']:.2f}x the teacher, "
                f"{pol['vs_random']:.1f}x random.",
            ]
        lines += ["", "![scores](eval/scores.png)", ""]
        if exists(run.join("eval", "gameplay.gif")):
            lines += [
                "Gameplay (greedy, first evaluation episode):",
                "",
                "![gameplay](eval/gameplay.gif)",
                "",
            ]
    pre = _csv(run.join("pretrain", "metrics.csv"))
    if pre:
        write_bytes_atomic(run.join("report", "pretrain.png"), _pretrain_plot(pre))
        last = pre[-1]
        lines += ["## Behaviour cloning", "", f"{len(pre)} epochs; last epoch: validation accuracy {_num(last.get('val/accuracy')):.3f}, "
                  f"balanced accuracy {_num(last.get('val/balanced_accuracy')):.3f}, {_num(last.get('train/samples_per_s')):,.0f} samples/s.", "",
                  "![behaviour cloning](report/pretrain.png)", ""]  # fmt: skip
        best = _json(run.join("pretrain", "best.json")) or {}
        conf_row = next(
            (
                r
                for r in reversed(pre)
                if r.get("epoch") and _num(r["epoch"]) == _num(best.get("metrics", {}).get("epoch"))
            ),
            pre[-1],
        )
        if conf_row.get("val/confusion"):
            conf = np.array(json.loads(conf_row["val/confusion"]))
            ingest = _json(run.join("pretrain", "ingest.json")) or {}
            labels = list((ingest.get("train_action_counts") or {}).keys()) or [
                str(i) for i in range(len(conf))
            ]
            write_bytes_atomic(run.join("report", "confusion.png"), _confusion_plot(conf, labels))
            lines += ["![action confusion](report/confusion.png)", ""]
    ft = _json(run.join("finetune", "curve.json"))
    if ft:
        rows = _csv(run.join("finetune", "metrics.csv"))
        bc = next((p["mean"] for p in ft if p["phase"] == "bc"), None)
        write_bytes_atomic(run.join("report", "finetune.png"), _finetune_plot(ft, rows, bc))
        best = _json(run.join("finetune", "best.json")) or {}
        lines += [
            "## DQN fine-tuning",
            "",
            "| phase | env steps | greedy score | selection seeds | best.json |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {p['phase']} | {p['env_steps']:,} | {p['mean']:.1f} +- {p['std']:.1f} | {describe_seeds(p.get('seeds', []))} | "
                  f"{'chosen' if p['policy'] == best.get('checkpoint') else ''} |" for p in ft]  # fmt: skip
        lines += ["", "![fine-tuning](report/finetune.png)", ""]
        if best:
            lines += _choice(best, ev)
    lines += ["## Where things are", "", "- TensorBoard: `tensorboard --logdir " + run.uri + "`",
              "- configs: `config.<stage>.yaml` (rerun a stage with `--config` on one of them)",
              "- checkpoints: `pretrain/best.json`, `finetune/best.json` (`rayapp evaluate --checkpoint " + run.uri + "`)", ""]  # fmt: skip
    target = run.join("report.md")
    write_bytes_atomic(target, "\n".join(lines).encode())
    return target.uri
