"""Regions from a saliency map (boxes, outlines, ranking) and the localisation metrics with their chance
baselines; the trained-lesion check lives in test_explain.py (it reuses that file's briefly trained model)."""

from __future__ import annotations

import numpy as np
import pytest

from medclass.errors import ConfigError, DataError
from medclass.explain.regions import RegionFinder, choose_region_threshold, csv_fields, regions_mask
from medclass.metrics.localisation import (
    LocalisationCase,
    box_iou,
    disc_fraction,
    localisation_scores,
)


def blobs(h: int = 120, w: int = 160) -> np.ndarray:
    """Two Gaussian blobs: a strong one at (x=40, y=30) and a weaker one at (x=120, y=90)."""
    yy, xx = np.mgrid[:h, :w] + 0.5
    a = np.exp(-((xx - 40) ** 2 + (yy - 30) ** 2) / (2 * 8.0**2))
    b = 0.7 * np.exp(-((xx - 120) ** 2 + (yy - 90) ** 2) / (2 * 10.0**2))
    return (a + b).astype(np.float32)


def _inside(poly: np.ndarray, x: float, y: float) -> bool:
    from matplotlib.path import Path

    return bool(Path(poly).contains_point((x, y)))


def test_regions_are_ranked_boxed_and_outlined():
    sal = blobs()
    regions = RegionFinder(threshold=0.5, max_regions=5)(sal)
    assert len(regions) == 2
    first, second = regions
    assert (first.rank, second.rank) == (1, 2)
    assert first.peak == pytest.approx(float(sal.max())) and first.peak > second.peak
    assert first.peak_xy == pytest.approx((40, 30), abs=1.0) and second.peak_xy == pytest.approx(
        (120, 90), abs=1.0
    )
    # the half-maximum of a Gaussian of sigma 8 is at radius 8 * sqrt(2 ln 2) = 9.4 px
    x0, y0, x1, y1 = first.box
    assert x0 == pytest.approx(40 - 9.4, abs=1.5) and x1 == pytest.approx(40 + 9.4, abs=1.5)
    assert y0 == pytest.approx(30 - 9.4, abs=1.5) and y1 == pytest.approx(30 + 9.4, abs=1.5)
    mask = regions_mask(sal, 0.5)
    assert first.area_px + second.area_px == int(mask.sum())
    assert 0.5 * sal.max() <= first.mean <= first.peak
    poly = np.asarray(first.polygon)
    assert 8 <= len(poly) <= 128
    assert _inside(poly, 40, 30) and not _inside(poly, 120, 90)
    r = np.hypot(poly[:, 0] - 40, poly[:, 1] - 30)  # the outline is the half-maximum circle
    assert np.allclose(r, 9.4, atol=0.6)
    assert (poly[:, 0] >= x0 - 0.5).all() and (poly[:, 0] <= x1 + 0.5).all()
    d = first.to_dict()
    assert d["rank"] == 1 and len(d["box"]) == 4 and len(d["polygon"]) == len(poly)


def test_threshold_and_max_regions_change_what_is_found():
    sal = blobs()
    assert len(RegionFinder(0.8)(sal)) == 1  # the weaker blob (0.7) drops out
    assert len(RegionFinder(0.3, max_regions=1)(sal)) == 1
    low = RegionFinder(0.2)(sal)[0]
    high = RegionFinder(0.8)(sal)[0]
    assert low.area_px > high.area_px
    assert RegionFinder()(np.zeros((10, 10), np.float32)) == []
    nan_map = sal.copy()
    nan_map[:, :20] = np.nan  # not seen by the model
    assert RegionFinder()(nan_map)[0].box[0] >= 20
    with pytest.raises(ConfigError, match="between 0 and 1"):
        RegionFinder(1.5)
    with pytest.raises(ConfigError, match="max-regions"):
        RegionFinder(max_regions=0)
    with pytest.raises(DataError, match="2D"):
        RegionFinder()(np.zeros((2, 3, 4)))


def test_region_touching_the_border_is_closed_and_csv_is_flat():
    sal = np.zeros((50, 60), np.float32)
    sal[:10, :15] = 1.0  # a corner block
    (reg,) = RegionFinder(0.5)(sal)
    assert reg.box == (0.0, 0.0, 15.0, 10.0)
    poly = np.asarray(reg.polygon)
    assert poly[:, 0].min() == pytest.approx(0.0, abs=0.51) and poly[:, 1].max() == pytest.approx(
        10.0, abs=0.51
    )
    row = csv_fields([reg], 2)
    assert row["n_regions"] == 1 and row["region_1_box"] == "0.0 0.0 15.0 10.0" and row["region_2_box"] == ""


def test_box_iou_and_disc_fraction():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert disc_fraction(100, 100, (50, 50, 10)) == pytest.approx(np.pi * 100 / 10_000, rel=0.03)


def _cases(offset: float, n: int = 30, seed: int = 0) -> list[LocalisationCase]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x, y, r = *rng.uniform(40, 160, 2), rng.uniform(10, 20)
        px, py = x + offset, y
        out.append(LocalisationCase(200, 200, (x, y, r), (px, py), (px - r, py - r, px + r, py + r)))
    return out


def test_scores_separate_a_localiser_from_chance():
    good = localisation_scores(_cases(0.0))
    assert good.pointing == 1.0 and good.mean_iou == pytest.approx(1.0)
    assert good.iou_hit_rate == {0.1: 1.0, 0.3: 1.0, 0.5: 1.0}
    assert 0 < good.pointing_chance < 0.05 and 0 < good.mean_iou_chance < 0.05
    assert good.iou_hit_rate_chance[0.5] < good.iou_hit_rate_chance[0.1] < 0.1
    off = localisation_scores(_cases(60.0))  # always 60 px to the right: misses everything
    assert off.pointing == 0.0 and off.mean_iou == 0.0
    # boxes placed at random score what their chance baseline predicts
    rng = np.random.default_rng(1)
    rand = []
    for c in _cases(0.0, n=400):
        x0, y0 = rng.uniform(0, 200 - 2 * c.lesion[2], 2)
        rand.append(
            LocalisationCase(
                200, 200, c.lesion, (x0, y0), (x0, y0, x0 + 2 * c.lesion[2], y0 + 2 * c.lesion[2])
            )
        )
    s = localisation_scores(rand)
    assert s.mean_iou == pytest.approx(s.mean_iou_chance, abs=0.01)
    assert s.iou_hit_rate[0.1] == pytest.approx(s.iou_hit_rate_chance[0.1], abs=0.03)
    assert localisation_scores(_cases(0.0)).to_dict()["iou_hit_rate"]["0.3"] == 1.0
    with pytest.raises(DataError, match="no images"):
        localisation_scores([])


def test_threshold_chosen_on_lesions_fits_their_size():
    yy, xx = np.mgrid[:100, :100] + 0.5
    maps, boxes = [], []
    for cx, cy in ((30, 30), (70, 60), (50, 40)):
        maps.append(np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 10.0**2)).astype(np.float32))
        boxes.append(
            (cx - 6.0, cy - 6.0, cx + 6.0, cy + 6.0)
        )  # lesion radius 6 = the map at exp(-0.18) = 0.84
    t, iou = choose_region_threshold(maps, boxes)
    assert t == pytest.approx(0.85, abs=0.051) and iou > 0.85
    with pytest.raises(DataError):
        choose_region_threshold(maps, boxes[:1])
