"""LAM variants in one process, no Ray: which loss and quantiser make the codes carry the action?

On a recorded dataset with true actions (e.g. `benchmarks/lam.py --run-dir runs/lamfull` leaves
runs/lamfull/breakout/replays), episodes split 80/20 in order; each variant trains
`configs/lam-cpu.yaml`'s model (gray 105x80, quarter widths, one position) for `--steps` steps of 32
random training pairs, then on the held-out pairs reports codes used, the mutual information
between code and true action against a shuffled control, and the changed-pixel PSNR gain over
copying frame t (the baseline, same pairs, same process). On Pong and Breakout it also reports
what the pairs say about the action through the agent's paddle alone (`paddle_reference`: the
mutual information between its displacement and the action), a figure a LAM can reach.

    python benchmarks/lam_variants.py runs/lamfull/breakout/replays --steps 400 \\
        quantizer=vq quantizer=vq,changed_weight=50 quantizer=fsq,fsq_levels=4x4,changed_weight=50
    python benchmarks/lam_variants.py --quick      # a tiny recording, 20 steps: the path only

A variant is comma-separated LamSpec fields (fsq_levels as 4x4; `context=1` gives encoder and
decoder the frame before t as well; `steps=N` overrides --steps for it; `label_weight=W,
label_fraction=F` supervises the latent with the true actions of the first F of the training
episodes, LAOM's remedy for latents that ignore small controlled changes). Besides the MI with the
action at t it reports the MI with the action at t-1 (Pong's paddle answers a step late). The last
line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

BASE = dict(in_channels=1, height=105, width=80, enc_channels=(32, 64, 64, 128, 128),
            dec_channels=(128, 128, 64, 64, 32), latent_dim=64, codes=16, positions=1)  # fmt: skip


INTS = ("context", "steps")  # integer fields BASE leaves at LamSpec's defaults (steps: this variant's --steps)


def parse_variant(text: str) -> dict:
    kw = dict(BASE)
    for part in text.split(","):
        k, val = part.split("=")
        if k == "quantizer":
            kw[k] = val
        elif k == "fsq_levels":
            kw[k] = tuple(int(x) for x in val.split("x"))
        elif k in BASE or k in INTS:
            kw[k] = type(BASE.get(k, 0))(float(val))
        else:
            kw[k] = float(val)
    return kw


def pairs(episodes, pre, context: int = 0):
    """Every pair (t, t+1) of each episode as a stack of `context` + 2 frames (the context before t
    repeats the episode's first frame where the episode is younger), its action a_t and a_{t-1}."""
    frames, acts, before = [], [], []
    for e in episodes:
        f = pre(e.obs)
        n = len(f) - 1
        padded = np.concatenate([f[:1]] * context + [f])
        frames.append(np.concatenate([padded[j : j + n] for j in range(context + 2)], 1))
        a = np.asarray(e.actions[:, 0] if e.actions.ndim > 1 else e.actions, np.int64)
        acts.append(a[:n])
        before.append(np.concatenate([[0], a[: n - 1]]))
    return np.concatenate(frames), np.concatenate(acts), np.concatenate(before)


def mutual_information(c: np.ndarray, a: np.ndarray) -> float:
    joint = np.zeros((c.max() + 1, a.max() + 1))
    np.add.at(joint, (c, a), 1)
    p = joint / joint.sum()
    outer = p.sum(1, keepdims=True) @ p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log2(p[nz] / outer[nz])).sum())


# the agent's paddle in ALE's raw RGB frames: colour, the rows and columns to look in, and the
# axis it moves along (Pong: up and down at the right edge; Breakout: left and right at the bottom)
PADDLES = {"Pong": ((92, 186, 92), (slice(34, 194), slice(140, 144)), 0),
           "Breakout": ((200, 72, 72), (slice(189, 193), slice(8, 152)), 1)}  # fmt: skip


def paddle_reference(episodes, game: str) -> dict | None:
    """What a pair says about the action through the agent's paddle alone: the mutual information
    between the paddle's displacement from frame t to t+1 (raw pixels, rounded) and the action at t,
    and at t-1 (the paddle answers late), against a shuffled control. A reachable figure for a
    LAM's MI on the same pairs; None for other games or frames that are not raw RGB."""
    if game not in PADDLES or episodes[0].obs.ndim != 4 or episodes[0].obs.shape[-1] != 3:
        return None
    colour, (rows, cols), axis = PADDLES[game]
    dys, now, before = [], [], []
    for e in episodes:
        hit = np.all(e.obs[:, rows, cols] == colour, axis=-1).any(axis=2 - axis)  # (T, positions)
        pos = np.array([np.nonzero(h)[0].mean() if h.any() else np.nan for h in hit])
        dy = pos[1:] - pos[:-1]
        a = e.actions[:, 0] if e.actions.ndim > 1 else e.actions
        a = np.asarray(a[: len(dy)], np.int64)
        ok = ~np.isnan(dy)
        dys.append(np.round(dy[ok]).clip(-12, 12).astype(np.int64) + 12)
        now.append(a[ok])
        before.append(np.concatenate([[0], a[:-1]])[ok])
    dy, a, b = np.concatenate(dys), np.concatenate(now), np.concatenate(before)
    shuffled = np.random.default_rng(1).permutation(a)
    return {"pairs": len(dy), "mi_bits": round(mutual_information(dy, a), 4),
            "mi_previous_action_bits": round(mutual_information(dy, b), 4),
            "mi_shuffled_bits": round(mutual_information(dy, shuffled), 4),
            "action_entropy_bits": round(mutual_information(a, a), 4)}  # fmt: skip


def run_variant(kw: dict, train, test, steps: int, labelled: int = 0) -> dict:
    """Train one variant. With `label_weight` > 0 (LAOM, Nikulin et al.: a few action labels
    during LAM training), a linear head on the continuous latent learns the true action from a
    batch of 16 of the first `labelled` training pairs (the first `label_fraction` of the training
    episodes) at every step, its cross-entropy added to the loss with that weight; the held-out
    figures use no labels."""
    kw = dict(kw)
    steps = kw.pop("steps", steps)
    kw.pop("label_fraction", None)
    from rayapp.models.lam import LamSpec, LatentActionModel, changed_mask, psnr

    (f_tr, a_tr, _), (f_te, a_te, b_te) = train, test
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if kw.get("label_weight") and labelled:  # the model's own label head (LamSpec.label_classes, lam.label_weight)
        kw["label_classes"] = (int(max(a_tr.max(), a_te.max())) + 1,)
    else:
        kw["label_weight"] = 0.0
    m = LatentActionModel(LamSpec(**kw))
    head = m.label_heads[0] if len(m.label_heads) else None
    opt = torch.optim.Adam(m.parameters(), lr=3e-4)
    since = torch.zeros(kw["codes"])
    t0 = time.perf_counter()
    for s in range(steps):
        x = torch.from_numpy(f_tr[rng.integers(0, len(f_tr), 32)]).float() / 255
        few = None
        if head is not None:  # 16 of the labelled pairs, through the encoder and the head alone
            j = rng.integers(0, labelled, 16)
            y = torch.from_numpy(f_tr[j]).float() / 255
            few = (y[:, :-1], y[:, -1:], torch.from_numpy(a_tr[j])[:, None])
        out = m(x[:, :-1], x[:, -1:], few)
        opt.zero_grad()
        out.losses["total"].backward()
        opt.step()
        since += out.usage
        if s % 100 == 99:
            m.reset_unused_codes(since)
            since.zero_()
    m.eval()
    codes, gains, guessed = [], [], []
    with torch.no_grad():
        for b in range(0, len(f_te), 256):
            x = torch.from_numpy(f_te[b : b + 256]).float() / 255
            c = m.encode(x[:, :-1], x[:, -1:])
            if head is not None:  # the labels' head on held-out pairs: how much of the action the latent holds
                guessed.append(m.action_logits(x[:, :-1], x[:, -1:])[0].argmax(1).numpy())
            codes.append((c.numpy() * kw["codes"] ** np.arange(c.shape[1])).sum(1))  # positions -> one joint code
            pred = m.decode(x[:, :-1], c).clamp(0, 1)
            t, t1 = x[:, -2:-1], x[:, -1:]
            mask = changed_mask(t, t1)
            gains.append(float(torch.nanmean(psnr(pred, t1, mask)) - torch.nanmean(psnr(t, t1, mask))))
    c = np.concatenate(codes)
    shuffled = np.random.default_rng(1).permutation(a_te)
    out = {} if head is None else {"head_accuracy": round(float((np.concatenate(guessed) == a_te).mean()), 4),
                                   "majority_class": round(float(np.bincount(a_te).max() / len(a_te)), 4)}  # fmt: skip
    return out | {"codes_used": len(set(c.tolist())), "mi_bits": round(mutual_information(c, a_te), 4),
            "mi_shuffled_bits": round(mutual_information(c, shuffled), 4),
            "mi_previous_action_bits": round(mutual_information(c, b_te), 4),
            "changed_psnr_gain_over_copy_db": round(float(np.mean(gains)), 2), "seconds": round(time.perf_counter() - t0)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("uri", nargs="?", help="a recorded dataset with true actions")
    ap.add_argument("variants", nargs="*")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1: leave a core to a run beside it)")
    a = ap.parse_intermixed_args()
    from rayapp.frames import FrameSpec, Preprocessor
    from rayapp.replay.reader import ReplayDataset

    torch.set_num_threads(a.threads)
    if a.quick:
        from rayapp.config import load_config
        from rayapp.record import record

        tmp = tempfile.mkdtemp(prefix="lamv-")
        cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "lam-cpu.yaml"),
                          [f"run.dir={tmp}", "record.episodes=3", "env.max_episode_steps=80", "record.collectors=1",
                           "record.policy=noisy_teacher", "record.epsilon=0.3", "ray.num_cpus=2"])  # fmt: skip
        record(cfg, show_progress=False)
        a.uri, a.steps = cfg.data_uri, 20
        a.variants = a.variants or ["quantizer=vq", "quantizer=fsq,fsq_levels=4x4,changed_weight=50"]
    ds = ReplayDataset(a.uri)
    pre = Preprocessor(FrameSpec(True, (105, 80), (0, 0, 0, 0), 2), ds.info.observation.shape)
    eps = list(ds.iter_episodes())
    cut = max(1, int(len(eps) * 0.8))
    cache: dict[int, tuple] = {}  # context frames -> (train, test) windows

    def split(context: int) -> tuple:
        if context not in cache:
            cache.clear()  # one set of windows in memory at a time
            cache[context] = pairs(eps[:cut], pre, context), pairs(eps[cut:], pre, context)
        return cache[context]

    train, test = split(0)
    out = {"benchmark": "lam_variants", "uri": a.uri, "steps": a.steps, "pairs": [len(train[0]), len(test[0])], "variants": {}}
    out["paddle_reference"] = paddle_reference(eps[cut:], ds.info.game)  # on the held-out episodes, as the variants
    print(json.dumps({"paddle_reference": out["paddle_reference"]}), file=sys.stderr, flush=True)
    for v in a.variants:
        kw = parse_variant(v)
        tr, te = split(kw.get("context", 0))
        n_lab = int(round(cut * kw.get("label_fraction", 0.0)))  # whole training episodes, in order
        labelled = sum(len(e.obs) - 1 for e in eps[:n_lab])
        if kw.get("label_weight") and not labelled:
            raise SystemExit(f"{v}: label_fraction {kw.get('label_fraction', 0.0)} of {cut} training episodes labels none")
        out["variants"][v] = run_variant(kw, tr, te, a.steps, labelled)
        if labelled:
            out["variants"][v]["labelled_pairs"] = labelled
        print(json.dumps({v: out["variants"][v]}), file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
