"""Siemens MOSAIC images: one 2D DICOM image holding the slices of a volume as tiles.

The slice count comes from the CSA image header (NumberOfImagesInMosaic, read with nibabel's
``csareader``); without it every tile of the grid implied by Acquisition Matrix is taken (so an empty
last tile or two may appear). Tiles are read row by row; tile ``k`` is slice ``k``.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import numpy as np

from medclass.errors import InvalidPixelDataError
from medclass.ingest import dicom_meta as dm
from medclass.ingest.types import ImageMeta

log = logging.getLogger(__name__)


class Mosaic:
    """Where the tiles of a Siemens MOSAIC are, and their slice positions."""

    def __init__(self, n: int, tile_rows: int, tile_cols: int, positions: list[float] | None) -> None:
        self.n = n
        self.tile_rows = tile_rows
        self.tile_cols = tile_cols
        self.positions = positions

    def tile(self, arr: np.ndarray, index: int) -> np.ndarray:
        per_row = arr.shape[1] // self.tile_cols
        r, c = divmod(index, per_row)
        return arr[
            r * self.tile_rows : (r + 1) * self.tile_rows, c * self.tile_cols : (c + 1) * self.tile_cols
        ]

    def meta(self, ds: Any, path: str, index: int, shape: tuple[int, ...]) -> ImageMeta:
        pos = self.positions[index] if self.positions else None
        return dm.build_meta(ds, path, index=index, n_frames=self.n, original_shape=shape, position=pos)


def mosaic_layout(ds: Any, path: str) -> Mosaic | None:
    """The tile layout of a Siemens MOSAIC image (None for any other image).

    The slice count comes from the CSA image header's NumberOfImagesInMosaic; without it, every tile
    of the grid implied by Acquisition Matrix is taken. Slice positions come from nibabel's mosaic
    wrapper (mosaic-corrected Image Position along the CSA slice normal).
    """
    if "MOSAIC" not in [str(v).upper() for v in (ds.get("ImageType") or [])]:
        return None
    n = None
    csa_normal = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # nibabel.nicom warns that it is experimental
            from nibabel.nicom import csareader

        csa = csareader.get_csa_header(ds, "image")
        if csa is not None:
            n = csareader.get_scalar(csa, "NumberOfImagesInMosaic")
            csa_normal = csareader.get_vector(csa, "SliceNormalVector", 3)
    except Exception as exc:  # a malformed private CSA header: fall back to the acquisition matrix
        log.debug("%s: CSA header unreadable (%s)", path, exc)
    acq = [int(v) for v in (ds.get("AcquisitionMatrix") or []) if int(v) > 0]
    rows, cols = int(ds.Rows), int(ds.Columns)
    if n:
        per_row = math.ceil(math.sqrt(int(n)))
        tr, tc = rows // per_row, cols // per_row
    elif len(acq) == 2:
        tr, tc = acq[0], acq[1]
        n = (rows // tr) * (cols // tc)
    else:
        log.warning("%s: MOSAIC image without NumberOfImagesInMosaic or AcquisitionMatrix: kept whole", path)
        return None
    if tr <= 0 or tc <= 0 or rows % tr or cols % tc:
        raise InvalidPixelDataError(f"MOSAIC of {n} tiles does not fit a {rows}x{cols} image", path)
    return Mosaic(int(n), tr, tc, _mosaic_positions(ds, int(n), csa_normal))


def _mosaic_positions(ds: Any, n: int, csa_normal: Any) -> list[float] | None:
    """Tile positions along the slice normal (row × column direction), in mm.

    The mosaic's Image Position is shifted in-plane from the first tile's, which does not change its
    projection on the normal; tiles step by Spacing Between Slices (else Slice Thickness) in the
    direction of the CSA SliceNormalVector (ascending when it agrees with row × column).
    """
    try:
        pos = np.asarray([float(v) for v in ds.ImagePositionPatient])
        normal = dm.slice_normal(np.asarray([float(v) for v in ds.ImageOrientationPatient]))
        step = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 0)
    except (AttributeError, TypeError, ValueError):
        return None
    if not step or pos.shape != (3,):
        return None
    if csa_normal is not None and float(np.dot(np.asarray(csa_normal, dtype=float), normal)) < 0:
        step = -step
    first = float(np.dot(pos, normal))
    return [first + k * step for k in range(n)]
