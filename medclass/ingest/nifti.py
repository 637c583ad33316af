"""NIfTI-1/2 volumes (``.nii``, ``.nii.gz``) via nibabel → axial 2D slices.

Orientation convention: the volume is reoriented to the closest canonical orientation (RAS+: the first
voxel axis runs towards the patient's Right, the second Anterior, the third Superior) with
``nibabel.as_closest_canonical``; slices are taken along the third axis, inferior to superior (so
``index`` 0 is the most inferior slice and ``slice_position`` is the RAS z of the slice in mm, which for
axial data is also the DICOM LPS position along the slice normal). Each slice is laid out like a
radiological axial view, the same way a DICOM axial slice with ImageOrientationPatient
``[1,0,0, 0,1,0]`` displays: row 0 is the most anterior row, column 0 is the patient's right.
In array terms ``slice2d = data[:, :, k].T[::-1, ::-1]``.

Non-finite voxels (NaN/Inf) are set to the smallest finite value and masked; a volume with no finite
voxel raises :class:`InvalidPixelDataError`, and so do 4D+ volumes with a non-singleton 4th+ axis.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from medclass.errors import CorruptFileError, InvalidPixelDataError, MedclassError, short_message
from medclass.ingest.base import Frames, Reader, check_readable, check_size
from medclass.ingest.types import Image, ImageMeta

_CACHE_MAX_BYTES = 256 << 20  # bigger volumes are re-read rather than kept alive
_cache_lock = threading.Lock()
_cache: dict[tuple[str, int, int], tuple[Any, np.ndarray, tuple[int, ...]]] = {}


def _load(path: str, limit: int | None) -> Any:
    """The nibabel image as stored (lazy: voxels not read), after the 4D and size checks."""
    import nibabel as nib

    p = check_readable(path)
    try:
        img: Any = nib.load(str(p))
        shape = tuple(int(d) for d in img.shape)
    except MedclassError:
        raise
    except Exception as exc:  # ImageFileError, gzip/zlib errors, EOFError on truncated files
        raise CorruptFileError(f"NIfTI cannot be read ({short_message(exc, 160, typed=True)})", path) from exc
    if len(shape) > 3 and any(d != 1 for d in shape[3:]):
        raise InvalidPixelDataError(
            f"{len(shape)}D volume {'x'.join(map(str, shape))}: only 2D/3D images are supported "
            "(split the time/channel axis first)",
            path,
        )
    check_size(path, shape, img.get_data_dtype().itemsize, limit)
    return img


def _canonical(path: str, limit: int | None) -> tuple[Any, np.ndarray, tuple[int, ...]]:
    import nibabel as nib

    p = check_readable(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    img = _load(path, limit)
    stored_shape = tuple(int(d) for d in img.shape)
    try:
        img = nib.funcs.squeeze_image(img)
        if len(img.shape) == 2:
            img = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., None], img.affine, img.header)
        img = nib.as_closest_canonical(img)
        data = img.get_fdata(dtype=np.float32)
    except MedclassError:
        raise
    except Exception as exc:
        raise CorruptFileError(
            f"NIfTI voxel data unusable ({short_message(exc, 160, typed=True)})", path
        ) from exc
    if not np.isfinite(data).any():
        raise InvalidPixelDataError("every voxel is NaN or infinite", path)
    with _cache_lock:
        _cache.clear()  # keep one volume: read_frame on consecutive slices of one file stays cheap
        if data.nbytes <= _CACHE_MAX_BYTES:
            _cache[key] = (img, data, stored_shape)
    return img, data, stored_shape


def radiological_axial(data: np.ndarray, k: int) -> np.ndarray:
    """Slice ``k`` of a RAS+ volume laid out as a radiological axial view (rows A→P, cols R→L)."""
    return data[:, :, k].T[::-1, ::-1]


_LPS = np.array([-1.0, -1.0, 1.0])


def slice_position(affine: np.ndarray, k: int) -> float:
    """Position of canonical slice ``k`` along its normal, the way DICOM defines it (LPS mm).

    The normal is row direction × column direction of the displayed slice (columns run along −i,
    rows along −j in RAS), so a DICOM series and its NIfTI conversion give the same numbers.
    """
    row = _LPS * -affine[:3, 0]
    col = _LPS * -affine[:3, 1]
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal) or 1.0
    corner = _LPS * (affine @ np.array([0.0, 0.0, float(k), 1.0]))[:3]
    return float(np.dot(corner, normal))


class NiftiFrames(Frames):
    def __init__(self, path: str, limit: int | None) -> None:
        self.img, self.data, self.stored_shape = _canonical(path, limit)
        super().__init__(path, self.data.shape[2])

    def meta(self, index: int) -> ImageMeta:
        i = self._check(index)
        zooms = self.img.header.get_zooms()
        z = slice_position(self.img.affine, i)
        return ImageMeta(
            source=self.path,
            format="nifti",
            index=i,
            n_frames=self.n,
            photometric="MONOCHROME2",
            pixel_spacing=(float(zooms[1]), float(zooms[0])),
            original_shape=self.stored_shape,
            slice_position=z,
        )

    def _get(self, index: int) -> Image:
        px = np.ascontiguousarray(radiological_axial(self.data, index), dtype=np.float32)
        finite = np.isfinite(px)
        mask = None
        if not finite.all():
            fill = float(self.data[np.isfinite(self.data)].min())
            px = np.where(finite, px, np.float32(fill)).astype(np.float32)
            mask = finite
        return Image(pixels=px, meta=self.meta(index), mask=mask)


class NiftiReader(Reader):
    format = "nifti"

    def open(self, path: str, *, limit: int | None = None, min_size: int | None = None) -> Frames:
        return NiftiFrames(str(path), limit)

    def read_meta(self, path: str, *, limit: int | None = None) -> ImageMeta:
        import nibabel as nib

        img = _load(str(path), limit)
        shape = tuple(int(d) for d in img.shape[:3])
        zooms = img.header.get_zooms()
        if len(shape) == 3:  # canonical axes: which stored axis becomes x, y, z
            ornt = nib.orientations.io_orientation(img.affine)
            x, y, z = (int(np.flatnonzero(ornt[:, 0] == a)[0]) for a in (0, 1, 2))
            n, spacing = shape[z], (float(zooms[y]), float(zooms[x]))
        else:
            n, spacing = 1, (float(zooms[1]), float(zooms[0]))
        return ImageMeta(
            source=os.fspath(path),
            format="nifti",
            index=0,
            n_frames=n,
            photometric="MONOCHROME2",
            pixel_spacing=spacing,
            original_shape=tuple(int(d) for d in img.shape),
        )
