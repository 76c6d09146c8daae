"""`rayapp calibrate-score`: digit templates for `env.reward: screen_score` from labelled frames.

Labelled frames are PNGs of the captured frame (the pixels `env.score_region` is in, after
`env.frame_size`) with the score they show, `--frame FILE.png=SCORE`, or the configured screen
captured now while it shows a known score, `--capture SCORE`. The templates go to
`env.score_templates` (the rayapp command's default: `<config-stem>.score.npz` next to --config).
Every labelled frame is read back with the new templates before they are written, and the digits
no frame showed are named: a score with one of them will not read until it is calibrated too.

`--game-over FILE.png` (a frame at game over) cuts `env.game_over_region` out of it into
`env.game_over_template` (default `<config-stem>.game_over.png`), the picture that ends episodes.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from rayapp.config import Config
from rayapp.envs.screen.capture import ScreenCapture
from rayapp.envs.screen.digits import DigitTemplates, calibrate
from rayapp.errors import ScoreCalibrationError

__all__ = ["calibrate_score", "default_templates_path", "labelled_frame", "write_game_over"]


def default_templates_path(config_path: str) -> str:
    """`<config-stem>.score.npz` next to the config file."""
    return os.path.abspath(os.path.splitext(config_path)[0] + ".score.npz")


def labelled_frame(spec: str) -> tuple[np.ndarray, int]:
    """ "FILE.png=SCORE" -> (RGB frame, score)."""
    path, eq, score = spec.rpartition("=")
    if not eq or not path or not score.strip().isdigit():
        raise ScoreCalibrationError(f"--frame {spec!r}: expected FILE.png=SCORE, e.g. --frame shot.png=120")
    img = cv2.imread(path, cv2.IMREAD_COLOR) if os.path.exists(path) else None
    if img is None:
        raise ScoreCalibrationError(f"--frame {path}: not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), int(score)


def capture_frame(cfg: Config) -> np.ndarray:
    cap = ScreenCapture(cfg.env)
    try:
        if cfg.env.capture == "window" and cfg.env.focus:
            cap.focus()
        return cap.grab()
    finally:
        cap.close()


def calibrate_score(
    cfg: Config, frames: list[tuple[np.ndarray, int]], out: str = ""
) -> tuple[DigitTemplates, str]:
    """Calibrate, check, write; (the templates, where they went)."""
    e = cfg.env
    out = out or e.score_templates
    if not out:
        raise ScoreCalibrationError(
            "where the templates go: pass --config FILE.yaml (FILE.score.npz) or set env.score_templates"
        )
    if not e.score_region:
        raise ScoreCalibrationError(
            "env.score_region is not set: [left, top, width, height] of the score digits in the captured frame"
        )
    shapes = {f.shape for f, _ in frames}
    if len(shapes) > 1:
        raise ScoreCalibrationError(
            f"the labelled frames differ in size ({sorted(shapes)}): use frames as captured"
        )
    t = calibrate(frames, e.score_region)
    for i, (frame, score) in enumerate(frames):
        value, err = t.read(frame, e.score_max_distance)
        if value != score:
            raise ScoreCalibrationError(
                f"frame {i + 1} (score {score}) reads as {value if value is not None else 'nothing'} with its own "
                f"templates{': ' + err if err else ''}; check the label and env.score_region"
            )
    t.save(out)
    return t, out


def write_game_over(cfg: Config, path: str, config_path: str | None) -> str:
    """The game-over picture: env.game_over_region of the frame at `path`; where it went."""
    e = cfg.env
    if not e.game_over_region:
        raise ScoreCalibrationError(
            "--game-over needs env.game_over_region: [left, top, width, height] of the picture"
        )
    img = cv2.imread(path, cv2.IMREAD_COLOR) if os.path.exists(path) else None
    if img is None:
        raise ScoreCalibrationError(f"--game-over {path}: not a readable image")
    left, top, w, h = (int(v) for v in e.game_over_region)
    crop = img[top : top + h, left : left + w]
    if crop.shape[:2] != (h, w):
        raise ScoreCalibrationError(
            f"env.game_over_region {e.game_over_region} is not inside {path} ({img.shape[1]}x{img.shape[0]} pixels)"
        )
    if crop.min() == crop.max():
        raise ScoreCalibrationError(
            f"env.game_over_region {e.game_over_region} of {path} is one colour: it would match any blank screen"
        )
    out = e.game_over_template or (
        os.path.abspath(os.path.splitext(config_path)[0] + ".game_over.png") if config_path else ""
    )
    if not out:
        raise ScoreCalibrationError(
            "where the picture goes: pass --config FILE.yaml or set env.game_over_template"
        )
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    cv2.imwrite(out, crop)
    return out


def summary(t: DigitTemplates, frames: int, out: str) -> str:
    missing = sorted(set(range(10)) - set(t.known()))
    more = f"; not seen yet: {missing} (add frames showing them)" if missing else ""
    return (f"score templates for digits {t.known()} from {frames} labelled frame(s) of env.score_region "
            f"{list(t.region)} written to {out}{more}")  # fmt: skip
