"""Reading a score from the screen: digit templates calibrated from a few labelled frames.

The score region (`env.score_region`, [left, top, width, height] in the captured frame's pixels) is
turned gray and binarised at one threshold (Otsu's, over the calibration frames; the digits are the
minority side, bright or dark). Glyphs are the runs of columns that hold any digit pixel (digits
that do not touch); each is cropped to its own rows and compared at a fixed size (`GLYPH`) with
every template of a similar size: the fraction of pixels that differ is its distance, and the
nearest template within `env.score_max_distance` names the digit. A glyph that matches none, or a
region with no glyph, is a failed reading (`read` says why), never a guess.

`calibrate` cuts the labelled frames' regions into glyphs and labels them with the digits of the
true score (zero-padded on the left when the game draws leading zeros, as Atari Breakout does:
"007"). A region that is off the frame, shows one colour, holds fewer glyphs than the score has
digits, or gives two different digits the same picture raises a one-line ScoreCalibrationError.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from rayapp.errors import ConfigError, ScoreCalibrationError

__all__ = ["GLYPH", "DigitTemplates", "calibrate", "glyphs"]

GLYPH = (16, 12)  # (height, width) glyphs are compared at


def _crop(frame: np.ndarray, region: tuple[int, int, int, int]) -> np.ndarray | None:
    left, top, width, height = region
    h, w = frame.shape[:2]
    if left < 0 or top < 0 or left + width > w or top + height > h:
        return None
    crop = frame[top : top + height, left : left + width]
    return crop.mean(axis=2) if crop.ndim == 3 else crop.astype(np.float64)


def glyphs(mask: np.ndarray) -> list[np.ndarray]:
    """The glyphs of a binary region, left to right: runs of columns holding any set pixel, each
    cropped to its own rows."""
    cols = mask.any(axis=0)
    out, x = [], 0
    while x < len(cols):
        if not cols[x]:
            x += 1
            continue
        x1 = x
        while x1 < len(cols) and cols[x1]:
            x1 += 1
        g = mask[:, x:x1]
        rows = np.nonzero(g.any(axis=1))[0]
        out.append(g[rows[0] : rows[-1] + 1])
        x = x1
    return out


def _norm(g: np.ndarray) -> np.ndarray:
    return cv2.resize(g.astype(np.float32), (GLYPH[1], GLYPH[0]), interpolation=cv2.INTER_AREA) > 0.5


def _similar_size(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return all(abs(x - y) <= max(1, 0.2 * y) for x, y in zip(a, b))


@dataclass
class DigitTemplates:
    region: tuple[int, int, int, int]
    threshold: float
    bright: bool  # the digits are brighter than the background
    pictures: np.ndarray  # (n, *GLYPH) bool
    digits: np.ndarray  # (n,) the digit each picture shows
    sizes: np.ndarray  # (n, 2) the glyph's own height, width

    def mask(self, gray: np.ndarray) -> np.ndarray:
        return gray > self.threshold if self.bright else gray <= self.threshold

    def match(self, g: np.ndarray) -> tuple[int, float]:
        """The nearest digit to glyph `g` and its distance (1.0: no template of its size)."""
        size = g.shape
        ok = np.array([_similar_size(size, tuple(s)) for s in self.sizes])
        if not ok.any():
            return -1, 1.0
        dist = (self.pictures[ok] != _norm(g)).mean(axis=(1, 2))
        k = int(dist.argmin())
        return int(self.digits[ok][k]), float(dist[k])

    def read(self, frame: np.ndarray, max_distance: float) -> tuple[int | None, str]:
        """(the score, "") or (None, why the reading failed)."""
        gray = _crop(frame, self.region)
        if gray is None:
            return (
                None,
                f"env.score_region {list(self.region)} is not inside the {frame.shape[1]}x{frame.shape[0]} frame",
            )
        gs = glyphs(self.mask(gray))
        if not gs:
            return None, "no digits in env.score_region"
        out = []
        for i, g in enumerate(gs):
            digit, dist = self.match(g)
            if dist > max_distance:
                return (
                    None,
                    f"glyph {i + 1} of {len(gs)} ({g.shape[1]}x{g.shape[0]} px) matches no digit (nearest {digit}, distance {dist:.2f})",
                )
            out.append(str(digit))
        return int("".join(out)), ""

    def known(self) -> list[int]:
        return sorted({int(d) for d in self.digits})

    # ---- the file --------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:  # np.savez would add .npz to a name without it
            np.savez(f, region=np.array(self.region), threshold=self.threshold, bright=self.bright,
                     pictures=self.pictures, digits=self.digits, sizes=self.sizes)  # fmt: skip

    @classmethod
    def load(cls, path: str, region: list[int] | None = None) -> DigitTemplates:
        if not os.path.exists(path):
            raise ConfigError(
                f"env.score_templates {path} does not exist: run `rayapp calibrate-score` with this config first"
            )
        try:
            with np.load(path) as z:
                t = cls(tuple(int(v) for v in z["region"]), float(z["threshold"]), bool(z["bright"]),
                        z["pictures"].astype(bool), z["digits"].astype(int), z["sizes"].astype(int))  # fmt: skip
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(
                f"env.score_templates {path}: not digit templates from `rayapp calibrate-score` ({e})"
            ) from None
        if region and tuple(region) != t.region:
            raise ConfigError(
                f"env.score_templates {path} was calibrated for env.score_region {list(t.region)}, the config says "
                f"{list(region)}: run `rayapp calibrate-score` again"
            )
        return t


def calibrate(frames: list[tuple[np.ndarray, int]], region: list[int]) -> DigitTemplates:
    """Templates from (frame, true score) pairs; `region` is env.score_region."""
    if len(region) != 4:
        raise ScoreCalibrationError(
            f"env.score_region must be [left, top, width, height] of the score, got {region}"
        )
    region_t = tuple(int(v) for v in region)
    if not frames:
        raise ScoreCalibrationError(
            "calibrating the score needs labelled frames (a frame and the score it shows)"
        )
    grays = []
    for i, (frame, _) in enumerate(frames):
        gray = _crop(frame, region_t)
        if gray is None:
            raise ScoreCalibrationError(
                f"env.score_region {region} is not inside frame {i + 1} ({frame.shape[1]}x{frame.shape[0]} pixels)"
            )
        grays.append(gray)
    every = np.concatenate([g.ravel() for g in grays]).astype(np.uint8)
    if every.min() == every.max():
        raise ScoreCalibrationError(
            f"env.score_region {region} shows one colour in every labelled frame: nothing to read; point it at the score digits"
        )
    threshold, _ = cv2.threshold(every.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    bright = bool((every > threshold).mean() < 0.5)
    t = DigitTemplates(
        region_t,
        float(threshold),
        bright,
        np.zeros((0, *GLYPH), bool),
        np.zeros(0, int),
        np.zeros((0, 2), int),
    )
    pictures, digits, sizes, seen = [], [], [], set()
    for i, ((_, score), gray) in enumerate(zip(frames, grays)):
        gs = glyphs(t.mask(gray))
        text = str(int(score))
        if len(gs) < len(text):
            raise ScoreCalibrationError(
                f"frame {i + 1} (score {score}): env.score_region {region} holds {len(gs)} glyph(s), the score has "
                f"{len(text)} digit(s): widen the region to the whole score, or check the label"
            )
        text = text.zfill(len(gs))  # leading zeros drawn by the game
        for g, ch in zip(gs, text):
            key = (int(ch), g.shape, _norm(g).tobytes())
            if key not in seen:  # one template per distinct picture
                seen.add(key)
                pictures.append(_norm(g))
                digits.append(int(ch))
                sizes.append(g.shape)
    t.pictures, t.digits, t.sizes = np.array(pictures), np.array(digits), np.array(sizes)
    _check_distinct(t)
    return t


def _check_distinct(t: DigitTemplates, same: float = 0.01) -> None:
    """Two different digits with the same picture (at most `same` of the pixels differ; the nearest
    template names a glyph, so digits that differ by one segment still read): wrong labels, or the
    region holds more than the score."""
    for i in range(len(t.digits)):
        for j in range(i + 1, len(t.digits)):
            if t.digits[i] != t.digits[j] and _similar_size(tuple(t.sizes[i]), tuple(t.sizes[j])):
                if (t.pictures[i] != t.pictures[j]).mean() <= same:
                    raise ScoreCalibrationError(
                        f"the labelled frames show the digits {t.digits[i]} and {t.digits[j]} as the same picture: "
                        "check the labels, and that env.score_region holds the score's digits and nothing else"
                    )
