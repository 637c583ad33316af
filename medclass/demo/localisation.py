"""Does Grad-CAM point at the opacity? The hit rate on images whose lesion position is recorded.

For each image with a recorded lesion (``lesions.json`` of :func:`medclass.synth.generate_cxr_dataset`),
the Grad-CAM map of the positive class is computed at the model input, mapped back onto the original pixel
grid (:meth:`medclass.preprocess.Geometry.to_original`), and its maximum is compared with the lesion disc.
A *hit* is a maximum within ``r + tolerance`` original pixels of the lesion centre, where ``tolerance`` is
one cell of the target layer's grid in original pixels (the map is only known to that resolution: its
peak sits at a cell centre, so a lesion in the neighbouring cell can win it). Reported beside it: the
strict rate (inside the disc itself), the rate with half a cell, and the *chance* rate, what a peak drawn
uniformly over the image would score under the same rule (the fraction of the image inside the enlarged
disc, averaged over the images), so the hit rate can be judged against guessing.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medclass.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    """One explained image: lesion (x = column, y = row, r) and the map's peak, in original pixels."""

    path: str
    lesion_x: float
    lesion_y: float
    lesion_r: float
    peak_x: float
    peak_y: float
    distance: float
    tolerance: float
    probability: float
    chance: float  # fraction of the image within r + tolerance of the lesion centre

    @property
    def inside(self) -> bool:
        return self.distance <= self.lesion_r

    @property
    def hit(self) -> bool:
        return self.distance <= self.lesion_r + self.tolerance

    @property
    def half_cell(self) -> bool:
        return self.distance <= self.lesion_r + self.tolerance / 2


@dataclass(frozen=True)
class Localisation:
    """The hit rates and the per-image details."""

    layer: str
    method: str
    grid: tuple[int, int]
    tolerance_rule: str
    hits: list[Hit] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.hits)

    @property
    def hit_rate(self) -> float:
        return float(np.mean([h.hit for h in self.hits])) if self.hits else math.nan

    @property
    def strict_rate(self) -> float:
        return float(np.mean([h.inside for h in self.hits])) if self.hits else math.nan

    @property
    def half_cell_rate(self) -> float:
        return float(np.mean([h.half_cell for h in self.hits])) if self.hits else math.nan

    @property
    def chance_rate(self) -> float:
        return float(np.mean([h.chance for h in self.hits])) if self.hits else math.nan

    @property
    def tolerance_px(self) -> tuple[float, float]:
        """Smallest and largest tolerance (one cell) in original pixels."""
        t = [h.tolerance for h in self.hits]
        return (min(t), max(t)) if t else (math.nan, math.nan)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN → None)."""

        def clean(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {
            "layer": self.layer,
            "method": self.method,
            "grid": list(self.grid),
            "tolerance_rule": self.tolerance_rule,
            "n": self.n,
            "hit_rate": clean(self.hit_rate),
            "strict_rate": clean(self.strict_rate),
            "half_cell_rate": clean(self.half_cell_rate),
            "chance_rate": clean(self.chance_rate),
            "tolerance_px": [clean(t) for t in self.tolerance_px],
            "images": [
                asdict(h) | {"hit": h.hit, "inside": h.inside, "half_cell": h.half_cell} for h in self.hits
            ],
        }


def read_lesions(lesions_json: str | os.PathLike[str]) -> dict[str, dict[str, float]]:
    """``path → {"x", "y", "r"}`` for every image with a lesion. Raises :class:`DataError` when unreadable."""
    try:
        doc = json.loads(Path(lesions_json).read_text(encoding="utf-8"))
        return {str(im["path"]): dict(im["lesion"]) for im in doc["images"] if im.get("lesion")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read the lesion positions: {exc}", lesions_json) from exc


class LesionMaps:
    """Saliency of ``positive_class`` for images read from paths, batch by batch: the one loop behind
    :func:`grad_cam_hits` and the region measurements (:mod:`medclass.demo.regions`).

    Raises CheckpointError for a bad checkpoint and DataError when the class is unknown to it.
    """

    def __init__(self, checkpoint: str | os.PathLike[str], *, positive_class: str = "opacity",
                 layer: str = "Mixed_5d", method: str = "gradcam", batch_size: int = 8) -> None:  # fmt: skip
        from medclass import checkpoint as checkpoints
        from medclass.explain import Explainer, layer_grid
        from medclass.preprocess import Preprocessor

        ckpt = checkpoints.load(Path(checkpoint))
        meta = ckpt.meta
        classes = list(meta["classes"])
        if positive_class not in classes:
            raise DataError(f"class {positive_class!r} is not one of the checkpoint's classes {classes}")
        self.target = classes.index(positive_class)
        self.pre = Preprocessor.from_meta(meta)
        self.grid = layer_grid(ckpt.model, layer, self.pre.spec.size)
        self.layer, self.method, self.batch_size = layer, method, batch_size
        self.explainer = Explainer(ckpt.model, method=method, layer=layer, batch_size=batch_size,
                                   task=str(meta["task"]))  # fmt: skip

    def __call__(
        self, paths: Sequence[str | os.PathLike[str]]
    ) -> Iterator[tuple[int, Any, np.ndarray, float]]:
        """(index into ``paths``, geometry, S×S map, probability of the class) for each image, in order."""
        import torch

        from medclass.ingest import read

        for start in range(0, len(paths), self.batch_size):
            prepared = [self.pre(read(p)[0]) for p in paths[start : start + self.batch_size]]
            x = torch.from_numpy(np.stack([p.array for p in prepared]))  # B×3×S×S
            sal = self.explainer.explain(x, [self.target] * len(prepared))
            for k, (prep, cam, prob) in enumerate(zip(prepared, sal.maps, sal.probabilities, strict=True)):
                yield start + k, prep.geometry, cam, float(prob[self.target])


def grad_cam_hits(
    checkpoint: str | os.PathLike[str],
    manifest: str | os.PathLike[str],
    lesions_json: str | os.PathLike[str],
    *,
    data_root: str | os.PathLike[str] | None = None,
    split: str = "test",
    positive_class: str = "opacity",
    layer: str = "Mixed_5d",
    method: str = "gradcam",
    batch_size: int = 8,
    on_image: Callable[[int, int], None] | None = None,
) -> Localisation:
    """Grad-CAM hit rate of ``positive_class`` over the ``split`` images that have a recorded lesion.

    ``on_image(done, total)`` is called after each image (progress). Returns a :class:`Localisation`.
    Raises CheckpointError / ManifestError for bad inputs and DataError when the class is unknown to the
    checkpoint or no image of the split has a recorded lesion.
    """
    from medclass.manifest import load_manifest

    maps = LesionMaps(checkpoint, positive_class=positive_class, layer=layer, method=method,
                      batch_size=batch_size)  # fmt: skip
    lesions = read_lesions(lesions_json)
    m = load_manifest(manifest, data_root)
    rows = [r for r in m.rows if r.split == split and str(r.path) in lesions]
    if not rows:
        raise DataError(f"no {split} image has a recorded lesion in {lesions_json}", manifest)
    hits: list[Hit] = []
    for i, geometry, cam, prob in maps([m.resolve(r) for r in rows]):
        path = str(rows[i].path)
        hits.append(_hit(path, lesions[path], geometry, cam, maps.grid, prob))
        if on_image is not None:
            on_image(len(hits), len(rows))
    loc = Localisation(layer, method, maps.grid, _RULE, hits)
    log.info(
        "Grad-CAM (%s, %s) peak within the lesion (+ tolerance) on %d of %d %s images",
        method,
        layer,
        sum(h.hit for h in hits),
        len(hits),
        split,
    )
    return loc


_RULE = "within r + 1 CAM cell (the target layer's grid step, in original pixels) of the lesion centre"


def _hit(
    path: str, lesion: dict[str, float], geometry: Any, cam: np.ndarray, grid: Sequence[int], prob: float
) -> Hit:
    original = np.nan_to_num(geometry.to_original(cam), nan=-1.0)  # H×W
    row, col = np.unravel_index(int(np.argmax(original)), original.shape)
    # cell of the layer's grid, in original pixels (the larger of the two axes, to be conservative)
    cell = max(geometry.size / grid[0] / geometry.scale[0], geometry.size / grid[1] / geometry.scale[1])
    x, y, r = float(lesion["x"]), float(lesion["y"]), float(lesion["r"])
    height, width = original.shape
    rows, cols = np.ogrid[:height, :width]
    chance = float(np.mean((cols - x) ** 2 + (rows - y) ** 2 <= (r + cell) ** 2))
    return Hit(
        path=path,
        lesion_x=x,
        lesion_y=y,
        lesion_r=r,
        peak_x=float(col),
        peak_y=float(row),
        distance=float(math.hypot(col - x, row - y)),
        tolerance=float(cell),
        probability=prob,
        chance=chance,
    )
