"""Do the saliency *regions* find the opacity? Pointing game and box IoU on known lesions, beside chance.

The region threshold (a fraction of each map's peak, :mod:`medclass.explain.regions`) is chosen on the
validation split's recorded lesions (the best mean IoU of the top region's box), then measured — never
tuned — on the test split and on a **held-out set** generated the same way with another seed (new
patients, anatomy and lesion positions). For each image the Grad-CAM map of the positive class is taken
back to the original pixel grid; its top region's box is compared with the lesion disc's box (IoU) and
its maximum with the disc (pointing game), and :func:`medclass.metrics.localisation.localisation_scores`
adds what chance scores under the same rules.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medclass.demo.localisation import LesionMaps, read_lesions
from medclass.errors import DataError
from medclass.metrics.localisation import LocalisationCase, LocalisationScores, localisation_scores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegionLocalisation:
    """The chosen threshold and the scores on the test split and the held-out set."""

    threshold: float
    threshold_source: str  # "validation lesions (n=…, mean IoU …)" or "default"
    test: LocalisationScores
    heldout: LocalisationScores | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "test": self.test.to_dict(),
            "heldout": None if self.heldout is None else self.heldout.to_dict(),
        }


def _maps(maps: LesionMaps, items: Sequence[tuple[Path, dict[str, float]]]) -> list[tuple[np.ndarray, tuple[float, float, float]]]:  # fmt: skip
    """(map on the original grid, lesion disc in pixel-edge coordinates) per item."""
    from medclass.explain import to_original

    out = []
    for i, geometry, cam, _ in maps([p for p, _ in items]):
        lesion = items[i][1]
        original = np.nan_to_num(to_original(cam, geometry), nan=0.0)  # H×W
        out.append((original, (float(lesion["x"]) + 0.5, float(lesion["y"]) + 0.5, float(lesion["r"]))))
    return out


def _scores(
    pairs: Sequence[tuple[np.ndarray, tuple[float, float, float]]], threshold: float
) -> LocalisationScores:
    from medclass.explain.regions import RegionFinder

    finder = RegionFinder(threshold, max_regions=1)
    cases = []
    for m, lesion in pairs:
        found = finder(m)
        peak = found[0].peak_xy if found else (-1.0, -1.0)
        cases.append(LocalisationCase(m.shape[0], m.shape[1], lesion, peak, found[0].box if found else None))
    return localisation_scores(cases)


def _split_items(manifest: Any, lesions: dict[str, dict[str, float]], split: str) -> list[tuple[Path, dict[str, float]]]:  # fmt: skip
    return [(Path(manifest.resolve(r)), lesions[str(r.path)]) for r in manifest.rows if r.split == split
            and str(r.path) in lesions]  # fmt: skip


def measure_regions(
    checkpoint: str | os.PathLike[str],
    manifest: str | os.PathLike[str],
    lesions_json: str | os.PathLike[str],
    *,
    data_root: str | os.PathLike[str] | None = None,
    heldout_lesions_json: str | os.PathLike[str] | None = None,
    positive_class: str = "opacity",
    layer: str = "Mixed_5d",
    method: str = "gradcam",
    batch_size: int = 8,
) -> RegionLocalisation:
    """Threshold chosen on the validation lesions, scores on the test lesions and (when given) on the
    held-out set's ``lesions.json`` (paths relative to its folder). Returns a :class:`RegionLocalisation`.
    Raises DataError when the test split has no recorded lesion.
    """
    from medclass.explain.regions import DEFAULT_THRESHOLD, choose_region_threshold
    from medclass.manifest import load_manifest

    maps = LesionMaps(checkpoint, positive_class=positive_class, layer=layer, method=method,
                      batch_size=batch_size)  # fmt: skip
    lesions = read_lesions(lesions_json)
    m = load_manifest(manifest, data_root)
    test_items = _split_items(m, lesions, "test")
    if not test_items:
        raise DataError(f"no test image has a recorded lesion in {lesions_json}", manifest)
    val = _maps(maps, _split_items(m, lesions, "val"))
    threshold, source = DEFAULT_THRESHOLD, "default (no validation lesions)"
    if val:
        boxes = [(x - r, y - r, x + r, y + r) for _, (x, y, r) in val]
        threshold, iou = choose_region_threshold([v[0] for v in val], boxes)
        source = f"validation lesions (n={len(val)}, mean IoU {iou:.3f})"
    test = _scores(_maps(maps, test_items), threshold)
    heldout = None
    if heldout_lesions_json is not None:
        root = Path(heldout_lesions_json).parent
        items = [(root / p, les) for p, les in read_lesions(heldout_lesions_json).items()]
        heldout = _scores(_maps(maps, items), threshold) if items else None
    log.info("regions at %.2f × peak: test pointing %.2f (chance %.2f), mean IoU %.3f (chance %.3f)",
             threshold, test.pointing, test.pointing_chance, test.mean_iou, test.mean_iou_chance)  # fmt: skip
    return RegionLocalisation(threshold, source, test, heldout)
