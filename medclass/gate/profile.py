"""The cheap half of the gate: what the training images' headers and preprocessed pixels looked like.

- :class:`ImageFacts`: the header values the gate compares (format, modality, photometric interpretation,
  body part, view position, size, pixel spacing), taken from an :class:`~medclass.ingest.ImageMeta`.
- :class:`MetaProfile`: the sets and ranges of those values over the training images; an image whose
  modality, photometric interpretation, body part or view position was never seen in training (when
  training recorded one), or whose size or pixel spacing lies far outside the training range, is out of
  scope. Needs no model.
- :class:`LayoutProfile`: intensity statistics after preprocessing and the average training image on a
  16×16 grid (over each image's content: letterbox bars left out). An image whose own 16×16 layout correlates with that average less than 99.5% of the
  training and validation images did is out of scope, and called *inverted* when its negative would have
  passed: an explained heuristic that needs no model either.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medclass.errors import CheckpointError, DataError

__all__ = ["GRID", "ImageFacts", "LayoutProfile", "MetaProfile", "layout_of"]

#: side of the grid the layout check compares images on
GRID = 16
#: how far outside the training range a size or pixel spacing may lie before the image is out of scope
RANGE_FACTOR = 2.0
#: the percentile of training + validation layout correlations below which an image is out of scope
LAYOUT_PERCENTILE = 0.5


@dataclass(frozen=True)
class ImageFacts:
    """The header values of one 2D image that the gate compares with the training images ('' / None:
    not recorded)."""

    format: str = ""
    modality: str = ""
    photometric: str = ""
    body_part: str = ""
    view_position: str = ""
    rows: int | None = None
    cols: int | None = None
    spacing: float | None = None  # mm, the smaller of row and column spacing

    @classmethod
    def from_meta(cls, meta: Any) -> ImageFacts:
        """The facts of an :class:`~medclass.ingest.ImageMeta` (size as stored, before any reduced decode)."""
        shape = tuple(int(n) for n in (getattr(meta, "original_shape", ()) or ()))
        fmt = str(getattr(meta, "format", "") or "")
        rows = cols = None
        if fmt in ("png", "jpeg") and len(shape) >= 2:
            rows, cols = shape[0], shape[1]
        elif fmt == "dicom" and len(shape) >= 3:
            rows, cols = shape[1], shape[2]
        spacing = getattr(meta, "pixel_spacing", None)
        scale = float(getattr(meta, "decoded_scale", 1.0) or 1.0)
        return cls(
            format=fmt,
            modality=str(getattr(meta, "modality", "") or "").upper(),
            photometric=str(getattr(meta, "photometric", "") or "").upper(),
            body_part=str(getattr(meta, "body_part", "") or "").upper(),
            view_position=str(getattr(meta, "view_position", "") or "").upper(),
            rows=rows,
            cols=cols,
            spacing=float(min(spacing)) * scale if spacing else None,
        )


def _sorted_set(values: Iterable[str]) -> list[str]:
    return sorted({v for v in values if v})


def _range(values: Iterable[float | None]) -> list[float] | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v)) and v > 0]
    return [min(vals), max(vals)] if vals else None


class MetaProfile:
    """Sets and ranges of :class:`ImageFacts` over the training images. After :meth:`fit`: ``formats_``,
    ``modalities_``, ``photometrics_``, ``body_parts_``, ``views_`` (sorted names seen), ``rows_``,
    ``cols_``, ``spacing_`` (``[min, max]`` or None when never recorded)."""

    FIELDS = (
        "formats_",
        "modalities_",
        "photometrics_",
        "body_parts_",
        "views_",
        "rows_",
        "cols_",
        "spacing_",
    )

    def __init__(self, range_factor: float = RANGE_FACTOR) -> None:
        self.range_factor = range_factor

    def fit(self, facts: Sequence[ImageFacts]) -> MetaProfile:
        """Record the training images' ``facts``. Returns self."""
        self.n_ = len(facts)
        self.formats_ = _sorted_set(f.format for f in facts)
        self.modalities_ = _sorted_set(f.modality for f in facts)
        self.photometrics_ = _sorted_set(f.photometric for f in facts)
        self.body_parts_ = _sorted_set(f.body_part for f in facts)
        self.views_ = _sorted_set(f.view_position for f in facts)
        self.rows_ = _range(f.rows for f in facts)
        self.cols_ = _range(f.cols for f in facts)
        self.spacing_ = _range(f.spacing for f in facts)
        return self

    def reasons(self, facts: ImageFacts) -> list[str]:
        """Why ``facts`` are out of scope ([] when nothing is)."""
        out = []
        for what, value, seen in (
            ("modality", facts.modality, self.modalities_),
            ("photometric interpretation", facts.photometric, self.photometrics_),
            ("body part", facts.body_part, self.body_parts_),
            ("view position", facts.view_position, self.views_),
        ):
            if value and seen and value not in seen:
                out.append(f"{what} {value} not in training data ({', '.join(seen)})")
        sizes: tuple[tuple[str, float | None, list[float] | None, str], ...] = (
            ("rows", facts.rows, self.rows_, " px"),
            ("columns", facts.cols, self.cols_, " px"),
            ("pixel spacing", facts.spacing, self.spacing_, " mm"),
        )
        for name, amount, bounds, unit in sizes:
            if amount is None or bounds is None:
                continue
            lo, hi = bounds[0] / self.range_factor, bounds[1] * self.range_factor
            if not lo <= amount <= hi:
                out.append(
                    f"{name} {amount:g}{unit} far outside training ({bounds[0]:g}–{bounds[1]:g}{unit})"
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n_, "range_factor": self.range_factor} | {
            k.rstrip("_"): getattr(self, k) for k in self.FIELDS
        }

    @classmethod
    def from_dict(cls, doc: Any) -> MetaProfile:
        """Raises :class:`CheckpointError` when ``doc`` is malformed."""
        try:
            p = cls(float(doc.get("range_factor", RANGE_FACTOR)))
            p.n_ = int(doc.get("n", 0))
            for key in cls.FIELDS[:5]:
                value = doc.get(key.rstrip("_")) or []
                if not all(isinstance(v, str) for v in value):
                    raise ValueError(f"{key.rstrip('_')} is not a list of names")
                setattr(p, key, list(value))
            for key in cls.FIELDS[5:]:
                value = doc.get(key.rstrip("_"))
                setattr(p, key, None if value is None else [float(value[0]), float(value[1])])
        except (AttributeError, TypeError, ValueError, IndexError) as exc:
            raise CheckpointError(f"the gate profile's metadata part is malformed ({exc})") from exc
        return p


def layout_of(array: np.ndarray, grid: int = GRID) -> np.ndarray:
    """The preprocessed image ``array`` (3×S×S or S×S) averaged over channels, cut to its content (rows and
    columns that are not entirely at the image's minimum: letterbox bars and black borders are left out,
    so the layout does not depend on the aspect ratio) and averaged onto a grid×grid layout (grid²)."""
    a = np.asarray(array, dtype=np.float64)
    if a.ndim == 3:
        a = a.mean(axis=0)  # S×S
    above = a > a.min() + 1e-6
    rows, cols = np.flatnonzero(above.any(axis=1)), np.flatnonzero(above.any(axis=0))
    if len(rows) >= grid and len(cols) >= grid:
        a = a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    ri = np.linspace(0, a.shape[0], grid + 1).astype(int)[:-1]
    ci = np.linspace(0, a.shape[1], grid + 1).astype(int)[:-1]
    blocks = np.add.reduceat(np.add.reduceat(a, ri, axis=0), ci, axis=1)
    counts = np.outer(np.diff(np.r_[ri, a.shape[0]]), np.diff(np.r_[ci, a.shape[1]]))
    return (blocks / counts).ravel()


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


class LayoutProfile:
    """Intensity statistics and the average layout of the preprocessed training images. After :meth:`fit`:
    ``template_`` (grid², the average layout), ``r_min_`` (the :data:`LAYOUT_PERCENTILE` percentile of the
    fitted images' correlation with it), ``mean_``/``std_`` (percentiles 0.5/50/99.5 of the images' mean and
    standard deviation)."""

    def __init__(self, percentile: float = LAYOUT_PERCENTILE) -> None:
        self.percentile = percentile

    def fit(self, train: Iterable[np.ndarray], held_out: Iterable[np.ndarray] = ()) -> LayoutProfile:
        """Average the layouts of the ``train`` arrays (3×S×S, any iterable, read once); set ``r_min_`` and
        the intensity statistics on ``train`` + ``held_out``. Returns self. Raises :class:`DataError` when
        ``train`` is empty."""
        layouts, means, stds = [], [], []
        n_train = 0
        for k, arrays in enumerate((train, held_out)):
            for a in arrays:
                layouts.append(layout_of(a))
                means.append(float(np.mean(a)))
                stds.append(float(np.std(a)))
                n_train += k == 0
        if not n_train:
            raise DataError("the gate's layout check needs training images; none were given")
        self.template_ = np.mean(layouts[:n_train], axis=0)
        r = np.array([_corr(v, self.template_) for v in layouts])
        self.r_min_ = float(np.percentile(r, self.percentile))
        self.mean_ = [float(v) for v in np.percentile(means, [0.5, 50, 99.5])]
        self.std_ = [float(v) for v in np.percentile(stds, [0.5, 50, 99.5])]
        return self

    def correlation(self, array: np.ndarray) -> float:
        return _corr(layout_of(array), self.template_)

    def reasons(self, array: np.ndarray) -> list[str]:
        """Why the preprocessed ``array`` is out of scope ([] when nothing is)."""
        out = []
        if float(np.std(array)) < self.std_[0] / 4:
            out.append(
                f"nearly uniform image (intensity s.d. {float(np.std(array)):.3g}, training ≥ {self.std_[0]:.3g})"
            )
        r = self.correlation(array)
        if r < self.r_min_:
            if -r >= self.r_min_:
                out.append(
                    f"looks inverted (layout r = {r:.2f} with the average training image, {-r:.2f} inverted)"
                )
            else:
                out.append(f"layout unlike the training images (r = {r:.2f}, training ≥ {self.r_min_:.2f})")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "grid": GRID,
            "percentile": self.percentile,
            "r_min": self.r_min_,
            "intensity_mean": self.mean_,
            "intensity_std": self.std_,
            "template": [round(float(v), 5) for v in self.template_],
        }

    @classmethod
    def from_dict(cls, doc: Any) -> LayoutProfile:
        """Raises :class:`CheckpointError` when ``doc`` is malformed."""
        try:
            p = cls(float(doc["percentile"]))
            p.template_ = np.asarray(doc["template"], dtype=np.float64)
            if p.template_.shape != (GRID * GRID,) or int(doc.get("grid", GRID)) != GRID:
                raise ValueError(f"template is not {GRID}×{GRID}")
            p.r_min_ = float(doc["r_min"])
            p.mean_ = [float(v) for v in doc["intensity_mean"]]
            p.std_ = [float(v) for v in doc["intensity_std"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"the gate profile's layout part is malformed ({exc})") from exc
        return p
