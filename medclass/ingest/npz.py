"""MedMNIST ``.npz`` files → one image per frame.

Frames are the ``*_images`` arrays concatenated in the order train, val, test, then any other
``*_images`` key in file order; frame ``k`` is the k-th image of that concatenation (docs/CONTRACTS.md).
2D data sets give H×W (grey) or H×W×3 (RGB) images with their stored 0..255 values. 3D data sets
(``N×D×H×W``, e.g. AdrenalMNIST3D) give the middle slice along the first volume axis of each volume.
Loading never unpickles (``allow_pickle=False``); the last file read is kept in memory, so
``read_frame`` over thousands of frames of one file decompresses it once.
"""

from __future__ import annotations

import threading
import zipfile

import numpy as np

from medclass.errors import (
    CorruptFileError,
    InvalidPixelDataError,
    MedclassError,
    NoImageError,
    short_message,
)
from medclass.ingest.base import Frames, ListFrames, Reader, check_readable, check_size
from medclass.ingest.types import Image, ImageMeta

_ORDER = ("train_images", "val_images", "test_images")
_lock = threading.Lock()
_cache: dict[tuple[str, int, int], tuple[np.ndarray, tuple[str, ...]]] = {}


def image_keys(keys: list[str]) -> list[str]:
    """The ``*_images`` keys in frame order: train, val, test, then the others in file order."""
    first = [k for k in _ORDER if k in keys]
    return first + [k for k in keys if k.endswith("_images") and k not in _ORDER]


def _load(path: str, limit: int | None) -> tuple[np.ndarray, tuple[str, ...]]:
    p = check_readable(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    with _lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = image_keys(list(z.files))
            if not keys:
                raise NoImageError(f"no '*_images' array in the npz (keys: {', '.join(z.files)})", path)
            parts = []
            for k in keys:
                arr = z[k]
                check_size(path, arr.shape, arr.dtype.itemsize, limit)
                parts.append(arr)
    except MedclassError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise CorruptFileError(f"npz cannot be read ({short_message(exc, 160, typed=True)})", path) from exc
    shapes = {a.shape[1:] for a in parts}
    if len(shapes) != 1:
        raise InvalidPixelDataError(f"image arrays of different shapes {sorted(shapes)}", path)
    data = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if data.ndim not in (3, 4):
        raise InvalidPixelDataError(f"image array of shape {data.shape} is not N×H×W[×3] or N×D×H×W", path)
    with _lock:
        _cache.clear()
        _cache[key] = (data, tuple(keys))
    return data, tuple(keys)


def _is_rgb(data: np.ndarray) -> bool:
    return data.ndim == 4 and data.shape[-1] == 3


class NpzReader(Reader):
    format = "npz"

    def open(self, path: str, *, limit: int | None = None, min_size: int | None = None) -> Frames:
        data, _ = _load(str(path), limit)
        shape = tuple(int(d) for d in data.shape)
        rgb = _is_rgb(data)

        def get(i: int) -> Image:
            arr = data[i]
            if arr.ndim == 3 and not rgb:  # a 3D volume: its middle slice
                arr = arr[arr.shape[0] // 2]
            pixels = np.ascontiguousarray(arr, dtype=np.float32)
            meta = ImageMeta(
                source=str(path),
                format="npz",
                index=i,
                n_frames=shape[0],
                photometric="RGB" if rgb else "MONOCHROME2",
                original_shape=shape,
                bits_stored=8 * data.dtype.itemsize if data.dtype.kind in "ui" else None,
            )
            return Image(pixels=pixels, meta=meta)

        return ListFrames(str(path), shape[0], get)
