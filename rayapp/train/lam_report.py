"""The visual report of `rayapp lam label` (`<run.dir>/lam/label/`): which latent actions were
used, what they look like, and, where the input has true actions, how much of the action they carry.

- `code_grids.png`: for each of the `lam.report_codes` most used codes, a row of the frame pairs it
  was assigned to (frame t | frame t+1 | where they differ);
- `code_usage.png`: the usage histogram; `report.json`: every figure below;
- where true actions exist: `code_by_action.png` (the table, each code's row normalised), the
  mutual information I(code; action) in bits beside the same with the actions shuffled (a control:
  what a finite sample gives by chance), and a linear probe (multinomial logistic regression on
  the one-hot codes of every position) trained on 80% of the episodes and scored on the other 20% (at least one episode),
  beside the majority class of those episodes.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
import torch

from rayapp.models.lam import perplexity
from rayapp.storage import resolve, write_bytes_atomic

__all__ = ["LabelReport", "write_report", "mutual_information", "linear_probe", "probe_train_mask", "code_grid"]


@dataclass
class LabelReport:
    codes: int
    codes_used: int
    perplexity: float
    top_codes: list[list[int]] = field(default_factory=list)  # [code, pairs]
    has_actions: bool = False
    mutual_information: float = math.nan
    mutual_information_shuffled: float = math.nan
    action_entropy: float = math.nan
    probe_accuracy: float = math.nan
    majority_accuracy: float = math.nan
    probe_pairs: list[int] = field(default_factory=list)  # [train, test]
    table: list[list[int]] = field(default_factory=list)  # top codes x actions
    files: dict[str, str] = field(default_factory=dict)


def mutual_information(x: np.ndarray, y: np.ndarray) -> float:
    """I(X; Y) in bits from paired samples of two discrete variables (the plug-in estimate)."""
    if len(x) == 0:
        return math.nan
    _, xi = np.unique(x, return_inverse=True)
    _, yi = np.unique(y, return_inverse=True)
    joint = np.zeros((xi.max() + 1, yi.max() + 1))
    np.add.at(joint, (xi, yi), 1)
    p = joint / joint.sum()
    px, py = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log2(p[nz] / (px @ py)[nz])).sum())


def probe_train_mask(episode_hash: np.ndarray, test_fraction: float = 0.2) -> np.ndarray:
    """True for the pairs of the probe's training episodes: the episodes with the highest
    `test_fraction` of hashes are held out, at least one whenever there are two or more (a fixed
    hash threshold held out none of 6 episodes a quarter of the time, and the probe had no test)."""
    u = np.unique(episode_hash)
    if len(u) < 2:
        return np.ones(len(episode_hash), bool)
    k = min(len(u) - 1, max(1, round(test_fraction * len(u))))
    return episode_hash < u[-k]


def linear_probe(codes: np.ndarray, actions: np.ndarray, train: np.ndarray, n_codes: int,
                 epochs: int = 200, seed: int = 0) -> tuple[float, float]:  # fmt: skip
    """(probe accuracy, majority-class accuracy) on the pairs where `train` is False."""
    test = ~train
    if not train.any() or not test.any():
        return math.nan, math.nan
    n_act = int(actions.max()) + 1
    majority = np.bincount(actions[train], minlength=n_act).argmax()
    torch.manual_seed(seed)
    offs = torch.arange(codes.shape[1]) * n_codes
    idx = torch.from_numpy(codes.astype(np.int64)) + offs  # one-hot position p, code c -> p * n_codes + c
    y = torch.from_numpy(actions.astype(np.int64))
    emb = torch.nn.EmbeddingBag(codes.shape[1] * n_codes, n_act, mode="sum")
    bias = torch.nn.Parameter(torch.zeros(n_act))
    opt = torch.optim.Adam([*emb.parameters(), bias], lr=0.1)
    tr = torch.from_numpy(train)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(emb(idx[tr]) + bias, y[tr]) + 1e-4 * emb.weight.pow(2).sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = (emb(idx[~tr]) + bias).argmax(1)
    return float((pred == y[~tr]).float().mean()), float((actions[test] == majority).mean())


def code_grid(examples: dict[int, np.ndarray], top: list[tuple[int, int]], gap: int = 3) -> np.ndarray:
    """One row per code: a label, then its pairs as frame t | frame t+1 | difference."""
    tiles = []
    for code, n in top:
        ex = examples.get(code)
        if ex is None or not len(ex):
            continue
        cells = []
        for a, b in ex:
            diff = cv2.applyColorMap(np.abs(b.astype(np.int16) - a.astype(np.int16)).max(-1).clip(0, 255)
                                     .astype(np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1]  # fmt: skip
            cells.append(np.concatenate([a, _gap(a, 1), b, _gap(a, 1), diff], axis=1))
        row = np.concatenate([np.concatenate([c, _gap(c, gap)], axis=1) for c in cells], axis=1)
        label = np.full((row.shape[0], 110, 3), 255, np.uint8)
        cv2.putText(label, f"code {code}", (4, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
        cv2.putText(label, f"{n:,} pairs", (4, 38), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (60, 60, 60), 1)
        tiles.append(np.concatenate([label, row], axis=1))
    if not tiles:
        return np.full((10, 10, 3), 255, np.uint8)
    width = max(t.shape[1] for t in tiles)
    padded = [np.pad(t, ((0, gap), (0, width - t.shape[1]), (0, 0)), constant_values=255) for t in tiles]
    return np.concatenate(padded, axis=0)


def _gap(a: np.ndarray, w: int) -> np.ndarray:
    return np.full((a.shape[0], w, 3), 255, np.uint8)


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img[..., ::-1])
    return buf.tobytes()


def _plot(draw) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    draw(fig, ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_report(cfg, ck, src, out_uri: str, results: list[dict]) -> tuple[LabelReport, str]:
    from rayapp.train.lam_label import report_keys

    folder = resolve(cfg.run.dir).join("lam", "label")
    stats = [torch.load(io.BytesIO(r["stats"]), weights_only=False) for r in results]  # written now or before
    n_codes = ck.spec.codes
    usage = sum((s["usage"] for s in stats), np.zeros(n_codes, np.int64))
    keys: dict[int, int] = {}
    examples: dict[int, np.ndarray] = {}
    for s in stats:
        for k, c in s["keys"].items():
            keys[k] = keys.get(k, 0) + c
        for k, ex in s["examples"].items():
            have = examples.get(k)
            examples[k] = ex if have is None else np.concatenate([have, ex])[: len(ex) if len(have) == 0 else 6]
    top = sorted(keys.items(), key=lambda kv: -kv[1])[: cfg.lam.report_codes]
    report = LabelReport(n_codes, int((usage > 0).sum()), float(perplexity(torch.from_numpy(usage).double())),
                         [[int(k), int(c)] for k, c in top])  # fmt: skip
    files = {"code_grids": folder.join("code_grids.png"), "code_usage": folder.join("code_usage.png")}
    write_bytes_atomic(files["code_grids"], _png(code_grid(examples, top)))
    write_bytes_atomic(files["code_usage"], _plot(lambda f, ax: (
        ax.bar(np.arange(n_codes), usage, width=1.0, color="#4063d8"), ax.set_xlabel("code"),
        ax.set_ylabel("pairs"), ax.set_title(f"code usage: {report.codes_used}/{n_codes} used, "
                                             f"perplexity {report.perplexity:.1f}"))))  # fmt: skip
    probes = [s["probe"] for s in stats if s["probe"] is not None]
    if probes:
        p = np.concatenate(probes)
        codes, acts, train = p[:, :-2], p[:, -2], probe_train_mask(p[:, -1])
        key = report_keys(codes.astype(np.int64), n_codes)
        rng = np.random.default_rng(cfg.run.seed)
        report.has_actions = True
        report.mutual_information = mutual_information(key, acts)
        report.mutual_information_shuffled = mutual_information(key, rng.permutation(acts))
        report.action_entropy = mutual_information(acts, acts)
        report.probe_accuracy, report.majority_accuracy = linear_probe(codes, acts, train, n_codes)
        report.probe_pairs = [int(train.sum()), int((~train).sum())]
        labels = list(src.info.actions[0].labels) or [str(i) for i in range(src.info.actions[0].n)]
        table = np.array([[int(((key == k) & (acts == a)).sum()) for a in range(len(labels))] for k, _ in top])
        report.table = table.tolist()
        files["code_by_action"] = folder.join("code_by_action.png")
        norm = table / np.maximum(1, table.sum(1, keepdims=True))

        def draw(f, ax):
            im = ax.imshow(norm, aspect="auto", cmap="viridis", vmin=0, vmax=1)
            ax.set_yticks(range(len(top)), [f"code {k}" for k, _ in top])
            ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
            ax.set_title(f"true action per code (row-normalised); MI {report.mutual_information:.3f} bits "
                         f"(shuffled {report.mutual_information_shuffled:.3f})", fontsize=9)  # fmt: skip
            f.colorbar(im, ax=ax)

        write_bytes_atomic(files["code_by_action"], _plot(draw))
    files["report"] = folder.join("report.json")
    report.files = {k: v.uri for k, v in files.items()}
    write_bytes_atomic(files["report"], (json.dumps({"output": out_uri, **asdict(report)}, indent=2) + "\n").encode())
    return report, folder.uri
