"""`rayapp lam map`: from a policy pretrained on latent actions to one that presses real controls.

    rayapp pretrain --set data.uri=runs/video/labelled --set data.label=latent_action --set run.dir=runs/latent-bc
    rayapp lam map --checkpoint runs/latent-bc --set data.uri=runs/breakout/replays --set run.dir=runs/mapped

The latent-pretrained network keeps its trunk (convolutions and fully connected layer: what it
learnt about the game from all the video) and gets new output heads for the real action space,
trained with the trunk on a small labelled subset of `data.uri`: `lam.map_episodes` episodes of
the training split, or `lam.map_fraction` of them (the validation and test splits are as in every
stage). It is plain behaviour cloning (`rayapp pretrain` with `model.init_mode: trunk`), so the
result is an ordinary BC run folder: `rayapp evaluate` plays it and `rayapp finetune` starts from
it like from any BC checkpoint.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from rayapp.config import Config
from rayapp.errors import RayappError
from rayapp.models.checkpoint import load_policy
from rayapp.train.bc import PretrainResult, pretrain

__all__ = ["map_to_controls", "MapSummary", "mapping_config"]


@dataclass
class MapSummary:
    source: str
    result: PretrainResult

    def line(self) -> str:
        m, tr = self.result.metrics, self.result.summary["splits"]["train"]
        acc = m.get("val/balanced_accuracy", m.get("train/balanced_accuracy"))
        return (f"mapped {self.source} to the real controls on {tr['episodes']} labelled episodes ({tr['steps']:,} "
                f"steps): {self.result.checkpoint} (balanced accuracy {acc:.3f})")  # fmt: skip


def mapping_config(cfg: Config) -> tuple[Config, str]:
    """The pretrain config of the mapping: the latent policy's trunk and frames, new heads."""
    source = cfg.lam.checkpoint
    if not source:
        raise RayappError("rayapp lam map needs the latent-action policy: --checkpoint RUN_OR_CHECKPOINT")
    pol = load_policy(source)
    if not pol.spec.controls or pol.spec.controls[0][0] != "latent_action":
        raise RayappError(f"{pol.path} was trained on {[c for c, _ in pol.spec.controls]}, not on latent actions "
                          "(pretrain it with --set data.label=latent_action first)")  # fmt: skip
    out = copy.deepcopy(cfg)
    f = pol.frames
    out.data.grayscale, out.data.resize, out.data.crop, out.data.frame_stack = (
        f.grayscale, list(f.resize), list(f.crop), f.frame_stack)  # fmt: skip
    out.data.label = "action"
    out.data.train_episodes = cfg.lam.map_episodes
    out.data.train_fraction = 1.0 if cfg.lam.map_episodes else cfg.lam.map_fraction
    out.model.arch, out.model.hidden, out.model.lstm_hidden = pol.spec.arch, pol.spec.hidden, pol.spec.lstm_hidden
    out.model.init_checkpoint, out.model.init_mode, out.model.trunk_lr = pol.path, "trunk", cfg.lam.map_trunk_lr
    out.pretrain.lr, out.pretrain.epochs = cfg.lam.map_lr, cfg.lam.map_epochs
    return out, pol.path


def map_to_controls(cfg: Config) -> MapSummary:
    mapped, source = mapping_config(cfg)
    return MapSummary(source, pretrain(mapped))
