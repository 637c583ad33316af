"""What every reader shares: the lazy frame sequence, the size limit, and file opening with typed errors.

A reader (DICOM, NIfTI, PNG/JPEG, npz) subclasses :class:`Reader` and overrides :meth:`Reader.open`
(and :meth:`Reader.read_meta` when the header can be read without the pixels). ``open`` returns a
:class:`Frames`: a sequence of 2D images that decodes a frame only when asked, so that a slice policy
that wants the middle slice of a 300-frame file decodes one frame, not 300.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import overload

import numpy as np

from medclass.errors import ImageTooLargeError, InvalidPixelDataError, UnreadableFileError
from medclass.ingest.types import Image, ImageMeta

#: Default ceiling on the bytes a file's pixel data may declare (rows*cols*frames*samples*bytes),
#: checked from the header before anything is allocated. ``MEDCLASS_MAX_IMAGE_BYTES`` overrides it.
DEFAULT_MAX_BYTES = 1 << 30


def max_image_bytes(override: int | None = None) -> int:
    """The size limit in force: ``override``, else ``$MEDCLASS_MAX_IMAGE_BYTES``, else 1 GiB."""
    if override is not None:
        return int(override)
    env = os.environ.get("MEDCLASS_MAX_IMAGE_BYTES", "").strip()
    return int(env) if env else DEFAULT_MAX_BYTES


def check_size(
    path: str | os.PathLike[str], shape: Iterable[int], bytes_per_value: float, limit: int | None
) -> None:
    """Raise :class:`ImageTooLargeError` if ``shape`` × ``bytes_per_value`` (or its float32 copy) exceeds the limit."""
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise InvalidPixelDataError(f"negative dimension in declared shape {tuple(dims)}", path)
    count = 1
    for d in dims:
        count *= d
    need = count * max(float(bytes_per_value), 4.0)  # we hand float32 on
    cap = max_image_bytes(limit)
    if need > cap:
        raise ImageTooLargeError(
            f"declared shape {'x'.join(map(str, dims))} needs {need / 2**30:.1f} GiB, over the "
            f"{cap / 2**30:.1f} GiB limit (raise MEDCLASS_MAX_IMAGE_BYTES if this is real)",
            path,
        )


def check_readable(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a Path if it is a non-empty regular file we may read.

    Raises :class:`UnreadableFileError` for a missing file, a folder, an empty file or no permission.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise UnreadableFileError("no such file", path) from None
    except OSError as exc:
        raise UnreadableFileError(f"cannot stat ({exc.strerror})", path) from None
    if p.is_dir():
        raise UnreadableFileError("is a folder, not a file (use discover/inspect to walk folders)", path)
    if st.st_size == 0:
        raise UnreadableFileError("empty file (0 bytes)", path)
    if not os.access(p, os.R_OK):
        raise UnreadableFileError("permission denied", path)
    return p


def head_bytes(path: str | os.PathLike[str], n: int = 352) -> bytes:
    """The first ``n`` bytes of the file; :class:`UnreadableFileError` when it cannot be opened."""
    p = check_readable(path)
    try:
        with open(p, "rb") as fh:
            return fh.read(n)
    except OSError as exc:
        raise UnreadableFileError(f"cannot read ({exc.strerror})", path) from None


class Frames(Sequence[Image]):
    """A lazy sequence of the 2D images of one source; ``frames[i]`` decodes frame ``i``.

    Subclasses implement :meth:`_get` (one frame) and may override :meth:`_get_many` when decoding
    everything at once is cheaper than frame by frame (compressed multi-frame DICOM).
    """

    def __init__(self, path: str, n: int) -> None:
        self.path = path
        self.n = n

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, index: int) -> Image: ...

    @overload
    def __getitem__(self, index: slice) -> list[Image]: ...

    def __getitem__(self, index: int | slice) -> Image | list[Image]:
        if isinstance(index, slice):
            return self.take(range(*index.indices(self.n)))
        return self.take([self._check(index)])[0]

    def _check(self, index: int) -> int:
        i = int(index)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            from medclass.errors import ConfigError

            raise ConfigError(f"frame {index} out of range (the file has {self.n} frame(s))", self.path)
        return i

    def take(self, indices: Iterable[int]) -> list[Image]:
        """The images at ``indices`` (in that order)."""
        idx = [self._check(i) for i in indices]
        return self._get_many(idx)

    def meta(self, index: int) -> ImageMeta:
        """Metadata of frame ``index`` without decoding pixels (default: decode and read ``.meta``)."""
        return self[index].meta

    def _get_many(self, indices: list[int]) -> list[Image]:
        return [self._get(i) for i in indices]

    def _get(self, index: int) -> Image:
        raise NotImplementedError


class ListFrames(Frames):
    """Frames built from a callable per index (for readers whose data are already in memory)."""

    def __init__(self, path: str, n: int, get: Callable[[int], Image]) -> None:
        super().__init__(path, n)
        self._fn = get

    def _get(self, index: int) -> Image:
        return self._fn(index)


class Reader:
    """A file format: :meth:`open` gives the frames, :meth:`read_meta` the header of the first one.

    Override :meth:`open`; override :meth:`read_meta` when the header can be read without pixels.
    ``limit`` is the byte ceiling passed to :func:`check_size` (None: :func:`max_image_bytes`).
    ``min_size`` is a hint from a caller that will shrink the image anyway: a reader whose format can be
    decoded at a reduced resolution (JPEG's DCT scaling) may do so while both sides stay ≥ ``min_size``,
    and says so in ``ImageMeta.decoded_scale``; the others ignore it.
    """

    format = "unknown"

    def __call__(self, path: str, *, limit: int | None = None, min_size: int | None = None) -> Frames:
        """Same as :meth:`open`: the reader table maps names to callables."""
        return self.open(path, limit=limit, min_size=min_size)

    def open(self, path: str, *, limit: int | None = None, min_size: int | None = None) -> Frames:
        raise NotImplementedError

    def read_meta(self, path: str, *, limit: int | None = None) -> ImageMeta:
        return self.open(path, limit=limit).meta(0)


def finite_or_mask(
    pixels: np.ndarray, mask: np.ndarray | None, path: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Replace NaN/±Inf by the smallest finite value and mark them False in the mask.

    Returns ``(pixels, mask)``; raises :class:`InvalidPixelDataError` when no pixel is finite.
    """
    finite = np.isfinite(pixels)
    if finite.all():
        return pixels, mask
    finite_px = finite.all(axis=-1) if pixels.ndim == 3 else finite
    if not finite.any():
        raise InvalidPixelDataError("every pixel is NaN or infinite", path)
    fill = float(pixels[finite].min())
    pixels = np.where(finite, pixels, np.float32(fill)).astype(np.float32, copy=False)
    mask = finite_px if mask is None else (mask & finite_px)
    return pixels, mask
