"""Latent actions on Breakout and Pong: does a latent action model learn what changed between two
frames, do its codes carry the action, and does pretraining on them pay?

Per game: the teacher with noise (record.policy: noisy_teacher, so every action occurs) records
episodes; Breakout's are also written out as numbered PNG folders and imported with
`rayapp import-video` (the unlabelled-video path); the LAM trains on the frames alone (Ray Train,
frames via the ingest pipeline); then, on the held-out test split's pairs (episodes no training or
selection saw), in the same process:
- reconstruction against the "copy frame t" baseline, whole frame and changed pixels (PSNR, dB);
- controllability (Genie's delta-PSNR): PSNR with the inferred code minus with a random code;
- codebook usage and perplexity; `rayapp lam label` on the recorded dataset (with its true
  actions): mutual information code/action against a shuffled control, a linear probe's accuracy
  of the true action from the codes against the majority class.
Breakout, label efficiency: BC on latent actions over all episodes, mapped to the real controls
with 10% of the labelled training episodes (`rayapp lam map`), against BC on those 10% alone;
both played greedy and sampled over the same fresh evaluation seeds beside the teacher and random
(mean +- s.e.; a difference within one s.e. of the difference is noise).
Speed: training pairs/s and the ingest's pairs/s alone, on this machine.

    python benchmarks/lam.py             # CPU-sized (about 50 minutes on 2 cores)
    python benchmarks/lam.py --quick     # about a minute: the path without label efficiency, numbers mean nothing
    python benchmarks/lam.py --games Breakout --variants fsq_4x4   # one variant and label efficiency (~45 min here)
    python benchmarks/lam.py --run-dir runs/lam-le --resume ...     # keep what that folder already has

Label efficiency trains each arm once per training seed (`--le-seeds`, default 3: run.seed 0, 1,
2 of the latent BC, the mapping and the small BC; the same LAM, the same labelled episodes, the
same evaluation seeds); a difference is called against the larger of its standard error over the
seeds' means and over all episodes pooled.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = os.path.join(os.path.dirname(__file__), "..")
CPU_CONFIG = os.path.join(ROOT, "configs", "lam-cpu.yaml")


def sizes(quick: bool) -> dict:
    if quick:
        return {"episodes": 4, "max_steps": 120, "lam_steps": 12, "eval_episodes": 2, "bc_epochs": 1, "map_epochs": 1,
                "variants": {"Breakout": ["fsq_3x3"]}, "label_efficiency": False, "le_seeds": 1}  # fmt: skip
    # label efficiency: 2-3 labelled episodes (~1,800 samples) need many passes to fit (with 12 epochs,
    # 2026-12-04, neither the mapped nor the small BC left the majority class: balanced accuracy
    # 0.27 / 0.25); 100 epochs take ~7 minutes per arm here; the latent BC sees ~15k samples an epoch
    # 2 CPUs train about 2 steps of 32 pairs a second: three quantisers on Breakout, the one whose
    # codes carry more of the action (mutual information on the labelled recording) on Pong
    return {"episodes": 30, "max_steps": 900, "lam_steps": 800, "eval_episodes": 12, "bc_epochs": 12, "map_epochs": 100,
            "variants": {"Breakout": ["fsq_3x3", "fsq_4x4", "vq_16"], "Pong": ["best"]}, "label_efficiency": True,
            "le_seeds": 3}  # fmt: skip


VARIANTS = {  # vocabulary and quantiser; every one at one latent position, changed pixels weighted 50
    "fsq_3x3": ["lam.quantizer=fsq", "lam.codes=9", "lam.fsq_levels=[3,3]"],
    "fsq_4x4": ["lam.quantizer=fsq", "lam.codes=16", "lam.fsq_levels=[4,4]"],
    "vq_16": ["lam.quantizer=vq", "lam.codes=16", "lam.fsq_levels=[]"],
}


def export_png_folders(uri: str, folder: str) -> int:
    """The recorded episodes as `bulk_videos/<episode>/<i>.png` (what unlabelled video looks like)."""
    import cv2

    from rayapp.replay.reader import ReplayDataset

    n = 0
    for ep in ReplayDataset(uri).iter_episodes(extras=()):
        d = os.path.join(folder, ep.episode_id)
        os.makedirs(d, exist_ok=True)
        for i, f in enumerate(ep.obs):
            cv2.imwrite(os.path.join(d, f"{i}.png"), f[..., ::-1])
        n += 1
    return n


def test_split_figures(cfg, ck) -> dict:
    """The figures of lam_eval on every pair of the test split (episodes the training never saw)."""
    import torch

    from rayapp.data.pipeline import build_pair_ingest, configure_data_context
    from rayapp.train.lam_eval import add_sums, finish_sums, pair_sums, split_pair

    configure_data_context()
    ingest = build_pair_ingest(cfg, ck.frames)
    model = ck.model()
    gen = torch.Generator().manual_seed(1)
    sums = None
    split = "test" if ingest.pair_counts["test"] else "val"
    for batch in ingest.dataset(split).iter_torch_batches(batch_size=64):
        f_t, f_t1 = split_pair(batch["obs"], ck.spec.in_channels)
        sums = add_sums(sums, pair_sums(model, f_t, f_t1, ck.spec.codes, gen))
    out = {k.split("/", 1)[1]: round(v, 4) for k, v in finish_sums(sums, split).items()}
    out["pairs"] = int(ingest.pair_counts[split])
    out["split"] = split
    return out


def ingest_rate(cfg, frames, seconds: float = 10.0) -> float:
    """Pairs/s of the pair ingest alone (decode, preprocess, stack; no model)."""
    from rayapp.data.pipeline import build_pair_ingest

    ingest = build_pair_ingest(cfg, frames)
    t0, n = time.perf_counter(), 0
    for batch in ingest.dataset("train").iter_batches(batch_size=32, batch_format="numpy"):
        n += len(batch["obs"])
        if time.perf_counter() - t0 > seconds:
            break
    return n / (time.perf_counter() - t0)


def sem(xs: list[float]) -> float:
    return float((sum((x - sum(xs) / len(xs)) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 / len(xs) ** 0.5) if len(xs) > 1 else math.nan


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--run-dir", default=None, help="keep the outputs here (default: a temporary folder)")
    ap.add_argument("--grids", default=None, help="copy Breakout's code_grids.png here (the README's picture)")
    ap.add_argument("--games", default=None, help="comma-separated subset of Breakout,Pong (default: both)")
    ap.add_argument("--variants", default=None, help=f"comma-separated, for every game run: {', '.join(VARIANTS)}")
    ap.add_argument("--le-seeds", type=int, default=None, help="training seeds of the label-efficiency arms (default 3)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the recording, video, LAMs, their figures and seeds' results already in --run-dir")  # fmt: skip
    a = ap.parse_args()
    if a.resume and not a.run_dir:
        ap.error("--resume needs the --run-dir to resume")
    from rayapp.cli import main as rayapp
    from rayapp.config import load_config
    from rayapp.evaluate import evaluate
    from rayapp.models.lam_checkpoint import load_lam
    from rayapp.record import record
    from rayapp.replay.reader import ReplayDataset
    from rayapp.runtime import init_ray
    from rayapp.train.bc import pretrain
    from rayapp.train.lam import lam_frames, train_lam
    from rayapp.train.lam_label import label_dataset
    from rayapp.train.lam_map import map_to_controls

    z = sizes(a.quick)
    if a.games:
        z["variants"] = {g: z["variants"][g] for g in a.games.split(",")}
    if a.variants:
        z["variants"] = {g: a.variants.split(",") for g in z["variants"]}
    if a.le_seeds:
        z["le_seeds"] = a.le_seeds
    kept = (lambda path: os.path.exists(path)) if a.resume else (lambda path: False)  # noqa: E731
    run = a.run_dir or tempfile.mkdtemp(prefix="lam-bench-")
    base = [f"env.max_episode_steps={z['max_steps']}", f"lam.steps={z['lam_steps']}", "ray.num_cpus=2"]
    if a.quick:
        base += ["lam.val_every=6", "lam.checkpoint_every=6", "lam.log_every=3", "lam.image_every=6", "lam.val_batches=2"]
    init_ray(load_config(CPU_CONFIG, base).ray)
    out: dict = {"benchmark": "lam", "quick": a.quick, "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                 "config": "configs/lam-cpu.yaml", "games": {}, "seconds": {}}  # fmt: skip
    t_all = time.perf_counter()
    best_variant = None
    for game, variants in z["variants"].items():
        g: dict = {}
        gdir = os.path.join(run, game.lower())
        sets = [*base, f"env.game={game}", f"run.dir={gdir}", f"record.episodes={z['episodes']}",
                "record.policy=noisy_teacher", "record.epsilon=0.3"]  # fmt: skip
        cfg = load_config(CPU_CONFIG, sets)
        t0 = time.perf_counter()
        data = cfg.data_uri
        if kept(os.path.join(data, "dataset.json")):
            ids = [t["episode_id"] for _, t in ReplayDataset(data).iter_tables(["episode_id"])]
            g["recorded"] = {"episodes": len({e.as_py() for c in ids for e in c.unique()}), "steps": sum(map(len, ids)),
                             "kept": True}  # fmt: skip
        else:
            rec = record(cfg, show_progress=False)
            g["recorded"] = {"episodes": len(rec.episodes), "steps": rec.steps}
        if game == "Breakout":  # through the unlabelled-video path
            video = os.path.join(gdir, "video")
            if not kept(os.path.join(video, "dataset.json")):
                pngs = os.path.join(run, "bulk_videos")
                export_png_folders(data, pngs)
                assert rayapp(["import-video", pngs, "--config", CPU_CONFIG, "--set", f"data.uri={video}",
                               "--set", f"env.game={game}"]) == 0  # fmt: skip
                shutil.rmtree(pngs)
            lam_data = video
        else:
            lam_data = data
        out["seconds"][f"{game}/record"] = round(time.perf_counter() - t0)
        g["variants"] = {}
        for v in [best_variant if x == "best" else x for x in variants]:
            t0 = time.perf_counter()
            vdir = os.path.join(gdir, f"lam-{v}")
            vcfg = load_config(CPU_CONFIG, [*sets, *VARIANTS[v], f"run.dir={vdir}", f"data.uri={lam_data}"])
            if kept(os.path.join(vdir, "bench.json")):  # this LAM, its figures and its labelled dataset
                g["variants"][v] = fig = {**json.load(open(os.path.join(vdir, "bench.json"))), "kept": True}
                print(json.dumps({game: {v: fig}}), file=sys.stderr, flush=True)
                continue
            res = train_lam(vcfg)
            ck = load_lam(vdir)
            fig = test_split_figures(vcfg, ck)
            fig["train_pairs_per_s"] = _last(vdir, "train/samples_per_s")
            fig["seconds"] = round(time.perf_counter() - t0)
            lab = label_dataset(load_config(CPU_CONFIG, [*sets, f"run.dir={vdir}", f"lam.checkpoint={vdir}"]), data,
                                os.path.join(vdir, "labelled"))  # fmt: skip
            r = lab.report
            fig.update({"label_codes_used": r.codes_used, "label_perplexity": round(r.perplexity, 2),
                        "mi_bits": round(r.mutual_information, 4), "mi_shuffled_bits": round(r.mutual_information_shuffled, 4),
                        "action_entropy_bits": round(r.action_entropy, 3), "probe_accuracy": round(r.probe_accuracy, 4),
                        "majority_accuracy": round(r.majority_accuracy, 4), "vocabulary": ck.spec.codes ** ck.spec.n_positions})  # fmt: skip
            g["variants"][v] = fig
            fig["best_val_step"] = res.metrics.get("step")
            with open(os.path.join(vdir, "bench.json"), "w") as f:
                json.dump(fig, f, indent=1)
            if "ingest_pairs_per_s" not in g:  # measured beside a LAM trained in this run
                g["ingest_pairs_per_s"] = round(ingest_rate(vcfg, lam_frames(vcfg), 3 if a.quick else 10), 1)
            print(json.dumps({game: {v: fig}}), file=sys.stderr, flush=True)
        if game == "Breakout":
            best_variant = max(g["variants"], key=lambda v: g["variants"][v]["mi_bits"])
            g["best_variant"] = best_variant
            if a.grids:
                shutil.copy(os.path.join(gdir, f"lam-{best_variant}", "lam", "label", "code_grids.png"), a.grids)
        if game == "Breakout" and z["label_efficiency"]:
            lam_dir = os.path.join(gdir, f"lam-{best_variant}")
            per_seed = []
            for k in range(z["le_seeds"]):
                path = os.path.join(gdir, "label-efficiency", f"seed{k}.json")
                if not kept(path):
                    one = label_efficiency(z, sets, gdir, data, lam_dir, k, pretrain, map_to_controls, evaluate, load_config)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, "w") as f:
                        json.dump(one, f, indent=1)
                per_seed.append(json.load(open(path)))
                print(json.dumps({"label_efficiency_seed": k, **per_seed[-1]}), file=sys.stderr, flush=True)
            g["label_efficiency"] = summarise_seeds(per_seed)
        out["games"][game] = g
    out["seconds"]["total"] = round(time.perf_counter() - t_all)
    out["run_dir"] = run
    print(json.dumps(out))


def _last(folder: str, key: str, stage: str = "lam") -> float | None:
    import csv

    rows = list(csv.DictReader(open(os.path.join(folder, stage, "metrics.csv"))))
    vals = [float(r[key]) for r in rows if r.get(key)]
    return round(vals[-1], 3) if vals else None


def label_efficiency(z, sets, gdir, data, lam_dir, seed, pretrain, map_to_controls, evaluate, load_config) -> dict:
    """Latent BC on all episodes + a head on 10% of the labels, against BC on the same 10% alone,
    trained with run.seed `seed`; the teacher and random play beside them at seed 0 only."""
    labelled = os.path.join(lam_dir, "labelled")
    sdir = os.path.join(gdir, "label-efficiency", f"seed{seed}")
    common = [*sets, f"pretrain.epochs={z['bc_epochs']}", "pretrain.num_workers=1", "pretrain.cpus_per_worker=1.5",
              f"run.seed={seed}"]  # fmt: skip
    t0 = time.perf_counter()
    latent = os.path.join(sdir, "latent-bc")
    pretrain(load_config(CPU_CONFIG, [*common, f"run.dir={latent}", f"data.uri={labelled}", "data.label=latent_action"]))
    mapped = os.path.join(sdir, "mapped")
    m = map_to_controls(load_config(CPU_CONFIG, [*common, f"run.dir={mapped}", f"data.uri={data}", f"lam.checkpoint={latent}",
                                                 "lam.map_fraction=0.1", f"lam.map_epochs={z['map_epochs']}"]))  # fmt: skip
    small = os.path.join(sdir, "bc-10pct")
    b = pretrain(load_config(CPU_CONFIG, [*common, f"run.dir={small}", f"data.uri={data}", "data.train_fraction=0.1",
                                          f"pretrain.epochs={z['map_epochs']}"]))  # fmt: skip
    # both modes: a greedy policy trained on 2 episodes may never press FIRE (the ball is never
    # launched: 0 points), sampling from it does; the evaluation seeds are run.seed 0's for every
    # training seed (paired episodes), so the teacher and random need playing once
    baselines = "[teacher,random]" if seed == 0 else "[]"
    ecfg = load_config(CPU_CONFIG, [*sets, f"run.dir={sdir}", f"eval.episodes={z['eval_episodes']}", "eval.modes=[greedy,sampled]",
                                    f"eval.max_episode_steps={z['max_steps'] * 2}", "eval.video_steps=1",
                                    f"eval.baselines={baselines}"])  # fmt: skip
    rep = evaluate(ecfg, m.result.checkpoint, others={"bc_10pct": b.checkpoint}, out_dir=os.path.join(sdir, "eval"))
    scores = rep.to_json()["scores"]
    res = {"seed": seed, "labelled_train_episodes": m.result.summary["splits"]["train"]["episodes"],
           "seconds": round(time.perf_counter() - t0), "eval_seeds": rep.seeds()}  # fmt: skip
    arms = [(f"{n}_{m}", f"{k}/{m}") for m in ("greedy", "sampled") for n, k in (("latent_mapped", "policy"), ("bc_10pct", "bc_10pct"))]
    for name, key in [*arms, *[(b, b) for b in ("teacher", "random") if b in scores]]:
        res[name] = scores[key]["per_episode"]
    for name, folder in (("latent_mapped", mapped), ("bc_10pct", small)):  # the imitation itself, on held-out episodes
        res[f"{name}_val_balanced_accuracy"] = _last(folder, "val/balanced_accuracy", "pretrain")
    return res


def summarise_seeds(per_seed: list[dict]) -> dict:
    """Each arm over the training seeds: the mean of the seeds' means with its s.e. over seeds, and
    all episodes pooled; each difference latent - BC (paired by seed, the same evaluation episodes)
    called against the larger of its two standard errors."""
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    out: dict = {"seeds": len(per_seed), "labelled_train_episodes": per_seed[0]["labelled_train_episodes"],
                 "episodes_per_seed": len(per_seed[0]["latent_mapped_sampled"]), "eval_seeds": per_seed[0]["eval_seeds"][:3] + ["..."],
                 "seconds_per_seed": [r["seconds"] for r in per_seed]}  # fmt: skip
    for arm in ("latent_mapped", "bc_10pct"):
        for m in ("greedy", "sampled"):
            by_seed = [mean(r[f"{arm}_{m}"]) for r in per_seed]
            pooled = [x for r in per_seed for x in r[f"{arm}_{m}"]]
            out[f"{arm}_{m}"] = {"mean": round(mean(by_seed), 2), "se_seeds": round(sem(by_seed), 2),
                                 "se_pooled": round(sem(pooled), 2), "per_seed": [round(x, 2) for x in by_seed]}  # fmt: skip
        accs = [r[f"{arm}_val_balanced_accuracy"] for r in per_seed]
        out[f"{arm}_val_balanced_accuracy"] = accs
    for b in ("teacher", "random"):
        xs = per_seed[0].get(b)
        if xs:
            out[b] = {"mean": round(mean(xs), 2), "sem": round(sem(xs), 2), "episodes": len(xs)}
    for m in ("greedy", "sampled"):
        diffs = [mean(r[f"latent_mapped_{m}"]) - mean(r[f"bc_10pct_{m}"]) for r in per_seed]
        pooled = math.hypot(out[f"latent_mapped_{m}"]["se_pooled"], out[f"bc_10pct_{m}"]["se_pooled"])
        se = max(x for x in (sem(diffs), pooled) if not math.isnan(x))
        diff = mean(diffs)
        better = "latent better" if diff > 0 else "bc better"
        verdict = "noise" if abs(diff) <= se else (better if abs(diff) > 2 * se else f"{better}, within 2 SE")
        out[f"difference_{m}"] = {"mean": round(diff, 2), "se_seeds": round(sem(diffs), 2), "se_pooled": round(pooled, 2),
                                  "per_seed": [round(x, 2) for x in diffs], "verdict": verdict}  # fmt: skip
    return out


if __name__ == "__main__":
    main()
