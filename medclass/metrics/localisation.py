"""Weak-localisation metrics against known lesions: pointing game and box IoU, each beside chance.

The CheXlocalize way (Saporta et al. 2022): the *pointing game* counts an image as a hit when the map's
maximum lies inside the ground-truth lesion; *box IoU* compares the predicted region's bounding box with
the lesion's, summarised by its mean and the hit rate at IoU ≥ 0.1, 0.3 and 0.5.

Each number comes with what **chance** scores under the same rule, so a result can be told from guessing:
for the pointing game, a point drawn uniformly over the image (the fraction of the image inside the
lesion); for IoU, the same predicted box moved to a uniformly random position inside the image (its
expected IoU and hit rates, by Monte Carlo with a fixed seed). A localiser that has fallen back to chance
scores about the same as its baseline.

Coordinates: (x, y) = (column, row), pixel edges (a pixel's centre is at +0.5), as in
:mod:`medclass.explain.regions`. Pure functions; an empty input raises :class:`DataError`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medclass.errors import DataError

IOU_THRESHOLDS = (0.1, 0.3, 0.5)
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class LocalisationCase:
    """One image: its size, the lesion disc (centre x, y and radius r, in pixel-edge coordinates), the
    map's peak and the top region's box (None when the map had no region)."""

    height: int
    width: int
    lesion: tuple[float, float, float]
    peak: tuple[float, float]
    box: Box | None

    @property
    def lesion_box(self) -> Box:
        x, y, r = self.lesion
        return (x - r, y - r, x + r, y + r)


@dataclass(frozen=True)
class LocalisationScores:
    """Pointing game and box IoU over ``n`` images, each with its chance baseline."""

    n: int
    pointing: float
    pointing_chance: float
    mean_iou: float
    mean_iou_chance: float
    iou_hit_rate: dict[float, float]  # threshold → fraction of images with IoU ≥ threshold
    iou_hit_rate_chance: dict[float, float]
    ious: tuple[float, ...]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready (threshold keys as strings, NaN → None)."""

        def c(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 4)

        return {
            "n": self.n,
            "pointing": c(self.pointing),
            "pointing_chance": c(self.pointing_chance),
            "mean_iou": c(self.mean_iou),
            "mean_iou_chance": c(self.mean_iou_chance),
            "iou_hit_rate": {f"{t:g}": c(v) for t, v in self.iou_hit_rate.items()},
            "iou_hit_rate_chance": {f"{t:g}": c(v) for t, v in self.iou_hit_rate_chance.items()},
        }


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (0 when they do not overlap)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _ious(boxes: np.ndarray, b: Box) -> np.ndarray:
    """IoU of each row of ``boxes`` (K×4) with ``b``."""
    iw = np.clip(np.minimum(boxes[:, 2], b[2]) - np.maximum(boxes[:, 0], b[0]), 0, None)
    ih = np.clip(np.minimum(boxes[:, 3], b[3]) - np.maximum(boxes[:, 1], b[1]), 0, None)
    inter = iw * ih
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def disc_fraction(height: int, width: int, lesion: tuple[float, float, float]) -> float:
    """Fraction of the image's pixel centres inside the lesion disc: the pointing game's chance."""
    x, y, r = lesion
    rows, cols = np.ogrid[:height, :width]
    return float(np.mean((cols + 0.5 - x) ** 2 + (rows + 0.5 - y) ** 2 <= r * r))


def localisation_scores(
    cases: Sequence[LocalisationCase],
    thresholds: Sequence[float] = IOU_THRESHOLDS,
    n_random: int = 500,
    seed: int = 0,
) -> LocalisationScores:
    """Pointing game and box IoU of ``cases`` and their chance baselines (see the module doc).

    Raises :class:`DataError` for an empty input.
    """
    if not cases:
        raise DataError("no images with a known lesion to measure localisation on")
    rng = np.random.default_rng(seed)
    hits, chance_pts, ious, chance_ious = [], [], [], []
    chance_hits = {t: [] for t in thresholds}  # type: dict[float, list[float]]
    for c in cases:
        x, y, r = c.lesion
        hits.append(math.hypot(c.peak[0] - x, c.peak[1] - y) <= r)
        chance_pts.append(disc_fraction(c.height, c.width, c.lesion))
        truth = c.lesion_box
        if c.box is None:
            ious.append(0.0)
            chance_ious.append(0.0)
            for t in thresholds:
                chance_hits[t].append(0.0)
            continue
        ious.append(box_iou(c.box, truth))
        w = min(c.box[2] - c.box[0], c.width)
        h = min(c.box[3] - c.box[1], c.height)
        x0 = rng.uniform(0, c.width - w, n_random)
        y0 = rng.uniform(0, c.height - h, n_random)
        rand = _ious(np.stack([x0, y0, x0 + w, y0 + h], axis=1), truth)
        chance_ious.append(float(rand.mean()))
        for t in thresholds:
            chance_hits[t].append(float(np.mean(rand >= t)))
    iou = np.asarray(ious)
    return LocalisationScores(
        n=len(cases),
        pointing=float(np.mean(hits)),
        pointing_chance=float(np.mean(chance_pts)),
        mean_iou=float(iou.mean()),
        mean_iou_chance=float(np.mean(chance_ious)),
        iou_hit_rate={float(t): float(np.mean(iou >= t)) for t in thresholds},
        iou_hit_rate_chance={float(t): float(np.mean(v)) for t, v in chance_hits.items()},
        ious=tuple(float(v) for v in iou),
    )
