"""From a saliency map to ranked regions a viewer can draw: bounding box and outline polygon per blob.

:class:`RegionFinder` thresholds a map on the original pixel grid at a fraction of its maximum
(``threshold``, relative: 0.5 keeps what is at least half as salient as the peak), labels the connected
components (8-connected, :func:`scipy.ndimage.label`) and describes each by its bounding box, its outer
outline (the iso-line of the map at the threshold, traced by contourpy — matplotlib's contour engine — so
it follows the smooth map rather than pixel steps), its area, and the peak and mean saliency inside it.
Regions are ranked by peak saliency (then area); the first holds the map's maximum.

Coordinates are DICOM image coordinates: ``(x, y)`` = (column, row) with (0, 0) the top-left corner of
the top-left pixel, so a pixel's centre is at (c + 0.5, r + 0.5) and the box of a component is
``(x0, y0, x1, y1)`` in pixel edges. They go unchanged into an SR SCOORD.

:func:`choose_region_threshold` picks the relative threshold whose top region best overlaps known lesions
(validation images): the number ``--region-threshold`` takes.

A region is where the *map* is high, not where disease is: saliency is not a segmentation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from medclass.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
DEFAULT_MAX_REGIONS = 3
MAX_POLYGON_POINTS = 128  # an outline longer than this is thinned evenly (SR and viewers need no more)

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 (pixel edges)


@dataclass(frozen=True)
class Region:
    """One connected component of the thresholded map, in original pixel coordinates (see module doc)."""

    rank: int  # 1 = holds the map's maximum
    box: Box
    polygon: tuple[tuple[float, float], ...]  # outer outline, open (the first point is not repeated)
    area_px: int
    peak: float  # saliency at the component's maximum (0..1, the map is scaled to its own maximum)
    mean: float
    peak_xy: tuple[float, float]  # centre of the peak pixel

    @property
    def box_polygon(self) -> tuple[tuple[float, float], ...]:
        """The box as four corners, clockwise from top-left (open)."""
        x0, y0, x1, y1 = self.box
        return ((x0, y0), (x1, y0), (x1, y1), (x0, y1))

    def to_dict(self, decimals: int = 2) -> dict[str, Any]:
        """JSON-ready, coordinates rounded to ``decimals``."""
        d = asdict(self)
        d["box"] = [round(v, decimals) for v in self.box]
        d["polygon"] = [[round(x, decimals), round(y, decimals)] for x, y in self.polygon]
        d["peak_xy"] = [round(v, decimals) for v in self.peak_xy]
        d["peak"], d["mean"] = round(self.peak, 4), round(self.mean, 4)
        return d


class RegionFinder:
    """Ranked regions of a saliency map. Settings here, the map in ``__call__``.

    ``threshold``: fraction of the map's maximum (0 < t < 1). ``max_regions``: keep the K best.
    ``min_area``: drop components smaller than this fraction of the image (interpolation specks).
    Raises :class:`ConfigError` for out-of-range settings.
    """

    def __init__(
        self,
        threshold: float = DEFAULT_THRESHOLD,
        max_regions: int = DEFAULT_MAX_REGIONS,
        min_area: float = 1e-4,
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ConfigError(
                f"region threshold must be between 0 and 1 (a fraction of the map's peak), got {threshold}"
            )
        if max_regions < 1:
            raise ConfigError(f"max-regions must be at least 1, got {max_regions}")
        self.threshold = float(threshold)
        self.max_regions = int(max_regions)
        self.min_area = float(min_area)

    def __call__(self, saliency: np.ndarray) -> list[Region]:
        """Regions of the H×W ``saliency`` map (NaN = not seen by the model, treated as 0), best first.

        An all-zero map has no regions. Raises :class:`DataError` when the map is not 2D.
        """
        if saliency.ndim != 2:
            raise DataError(f"expected a 2D saliency map, got shape {saliency.shape}")
        sal = np.nan_to_num(saliency.astype(np.float32, copy=False), nan=0.0)
        top = float(sal.max()) if sal.size else 0.0
        if not top > 0.0:
            return []
        level = self.threshold * top
        labels, n = ndimage.label(sal >= level, structure=np.ones((3, 3), bool))
        if n == 0:
            return []
        index = np.arange(1, n + 1)
        areas = ndimage.sum_labels(np.ones_like(sal), labels, index)
        peaks = ndimage.maximum(sal, labels, index)
        keep = [i for i in range(n) if areas[i] >= self.min_area * sal.size] or [int(np.argmax(peaks))]
        keep.sort(key=lambda i: (-float(peaks[i]), -float(areas[i])))
        keep = keep[: self.max_regions]
        means = ndimage.mean(sal, labels, index[keep])
        where = ndimage.maximum_position(sal, labels, index[keep])
        slices = ndimage.find_objects(labels)
        regions = []
        for rank, (i, mean, (pr, pc)) in enumerate(zip(keep, means, where, strict=True), start=1):
            rows, cols = slices[i]
            box = (float(cols.start), float(rows.start), float(cols.stop), float(rows.stop))
            regions.append(
                Region(
                    rank=rank,
                    box=box,
                    polygon=_outline(sal, labels, i + 1, (rows, cols), level),
                    area_px=int(areas[i]),
                    peak=float(peaks[i]),
                    mean=float(mean),
                    peak_xy=(pc + 0.5, pr + 0.5),
                )
            )
        return regions


def _outline(
    sal: np.ndarray, labels: np.ndarray, label: int, where: tuple[slice, slice], level: float
) -> tuple[tuple[float, float], ...]:
    """The outer iso-line at ``level`` of component ``label`` (other components masked out)."""
    import contourpy

    rows, cols = where
    h, w = sal.shape
    r0, r1 = max(rows.start - 1, 0), min(rows.stop + 1, h)  # one pixel of real values around it
    c0, c1 = max(cols.start - 1, 0), min(cols.stop + 1, w)
    lab = labels[r0:r1, c0:c1]
    z = np.zeros((r1 - r0 + 2, c1 - c0 + 2), np.float64)  # zero border: closes outlines at the image edge
    z[1:-1, 1:-1] = np.where((lab == label) | (lab == 0), sal[r0:r1, c0:c1], 0.0)
    lines = contourpy.contour_generator(z=z, line_type="Separate").lines(level)
    if not lines:  # a single pixel exactly at the level: its box is its outline
        x0, y0 = float(cols.start), float(rows.start)
        return ((x0, y0), (x0 + 1.0, y0), (x0 + 1.0, y0 + 1.0), (x0, y0 + 1.0))
    line = max(lines, key=lambda a: _area(np.asarray(a)))  # the outer boundary encloses the most
    pts = np.asarray(line, np.float64)
    if len(pts) > 1 and np.allclose(pts[0], pts[-1]):
        pts = pts[:-1]
    if len(pts) > MAX_POLYGON_POINTS:
        pts = pts[np.linspace(0, len(pts), MAX_POLYGON_POINTS, endpoint=False).astype(int)]
    # z index (i, j) is pixel (r0 + i - 1, c0 + j - 1), whose centre is at +0.5
    xs = pts[:, 0] + c0 - 1 + 0.5
    ys = pts[:, 1] + r0 - 1 + 0.5
    return tuple((float(x), float(y)) for x, y in zip(xs, ys, strict=True))


def _area(pts: np.ndarray) -> float:
    if len(pts) < 3:
        return 0.0
    x, y = pts[:, 0], pts[:, 1]
    return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2


def regions_mask(saliency: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean H×W mask of the pixels at least ``threshold`` × the map's maximum (all False for a zero map).

    The same set :class:`RegionFinder` labels (before ``max_regions`` and ``min_area`` are applied).
    """
    sal = np.nan_to_num(np.asarray(saliency, np.float32), nan=0.0)
    top = float(sal.max()) if sal.size else 0.0
    return sal >= threshold * top if top > 0 else np.zeros(sal.shape, bool)


def csv_fields(regions: Sequence[Region], max_regions: int) -> dict[str, Any]:
    """Flat columns for explanations.csv: ``n_regions`` and, per rank k ≤ ``max_regions``,
    ``region_k_box`` ("x0 y0 x1 y1"), ``region_k_peak``, ``region_k_mean`` (empty when absent)."""
    out: dict[str, Any] = {"n_regions": len(regions)}
    for k in range(1, max_regions + 1):
        r = regions[k - 1] if k <= len(regions) else None
        out[f"region_{k}_box"] = "" if r is None else " ".join(f"{v:.1f}" for v in r.box)
        out[f"region_{k}_peak"] = "" if r is None else round(r.peak, 4)
        out[f"region_{k}_mean"] = "" if r is None else round(r.mean, 4)
    return out


def choose_region_threshold(
    maps: Sequence[np.ndarray],
    lesion_boxes: Sequence[Box],
    candidates: Sequence[float] = tuple(np.round(np.arange(0.2, 0.91, 0.05), 2)),
) -> tuple[float, float]:
    """The relative threshold whose top region's box overlaps the lesion boxes best (mean IoU).

    ``maps``: H×W saliency on the original grid of validation images with known lesions; ``lesion_boxes``
    the lesions' boxes in the same coordinates. Returns (threshold, its mean IoU); ties go to the lower
    threshold. Raises :class:`DataError` when no map is given or the lengths differ.
    """
    from medclass.metrics.localisation import box_iou

    if not maps or len(maps) != len(lesion_boxes):
        raise DataError(
            f"need one lesion box per map to choose a threshold ({len(maps)} maps, {len(lesion_boxes)} boxes)"
        )
    best = (float(candidates[0]), -math.inf)
    for t in candidates:
        finder = RegionFinder(float(t), max_regions=1)
        ious = []
        for m, lesion in zip(maps, lesion_boxes, strict=True):
            found = finder(m)
            ious.append(box_iou(found[0].box, lesion) if found else 0.0)
        score = float(np.mean(ious))
        if score > best[1] + 1e-12:
            best = (float(t), score)
    log.info(
        "region threshold %.2f chosen on %d validation lesions (mean IoU %.3f)", best[0], len(maps), best[1]
    )
    return best


def regions_figure_png(display: np.ndarray, regions: Sequence[Region], width_px: int = 640) -> bytes:
    """The windowed image (H×W, 0..1) with each region's outline (solid) and box (dashed), numbered by
    rank, as PNG bytes ``width_px`` wide: the picture the clinician report shows beside the overlay."""
    import io

    from matplotlib.figure import Figure
    from matplotlib.patches import Polygon, Rectangle

    h, w = display.shape[:2]
    fig = Figure(figsize=(width_px / 100, width_px / 100 * h / w), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(display, cmap="gray", vmin=0, vmax=1, extent=(0, w, h, 0), interpolation="antialiased")
    colours = ("#ffd400", "#00e5ff", "#ff4fd8", "#7CFC00", "#ff8c00")
    for r in regions:
        c = colours[(r.rank - 1) % len(colours)]
        ax.add_patch(Polygon(r.polygon, closed=True, fill=False, edgecolor=c, linewidth=1.6))
        x0, y0, x1, y1 = r.box
        ax.add_patch(
            Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=c, linewidth=1.0, linestyle="--")
        )
        ax.text(x0, y0, f" {r.rank}", color="black", fontsize=10, weight="bold", va="bottom", ha="left",
                backgroundcolor=c, parse_math=False)  # fmt: skip
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def report_section(display: Any, regions: Sequence[Region]) -> dict[str, Any]:
    """The regions figure and table rows of a clinician report's image section (plain data for the report
    stage)."""
    table = tuple(
        {"rank": r.rank, "box": r.box, "area_px": r.area_px, "peak": r.peak, "mean": r.mean} for r in regions
    )
    return {"regions_png": regions_figure_png(display, regions), "regions": table}
