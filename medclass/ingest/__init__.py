"""Ingestion: files (DICOM, NIfTI, PNG/JPEG, MedMNIST npz) → :class:`Image` (float32 pixels + metadata).

Public API::

    read(path, *, slice_policy="all") -> list[Image]      # one file
    read_frame(path, index) -> Image                       # one frame/slice of one file
    read_meta(path) -> ImageMeta                           # header only
    discover(paths) -> list[Source]                        # folders walked, DICOM series grouped
    load(source, *, slice_policy="all") -> list[Image]
    load_each(source, *, slice_policy="all") -> Iterator[Image | Failed]   # one bad slice fails alone
    frames(path_or_source) -> Frames                       # lazy sequence of the images

Formats are recognised by content (:func:`sniff`); readers live in :data:`READERS` (name → reader),
slice policies in :data:`SLICE_POLICIES` (plus ``index:N``). Pixel semantics are documented in
:mod:`medclass.ingest.dicom`, orientation of NIfTI slices in :mod:`medclass.ingest.nifti`. Every failure
is a :class:`~medclass.errors.InputError` subclass naming the file. ``max_bytes`` (default 1 GiB, or
``$MEDCLASS_MAX_IMAGE_BYTES``) bounds what a header may declare; it is checked before decoding.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from medclass.errors import look_up
from medclass.ingest.base import DEFAULT_MAX_BYTES, Frames, Reader, max_image_bytes
from medclass.ingest.dicom import DicomReader
from medclass.ingest.discover import discover
from medclass.ingest.image import PilReader
from medclass.ingest.nifti import NiftiReader
from medclass.ingest.npz import NpzReader
from medclass.ingest.policies import SLICE_POLICIES, SlicePolicy, get_slice_policy
from medclass.ingest.series import SeriesFrames
from medclass.ingest.sniff import sniff
from medclass.ingest.types import Image, ImageMeta, Source, VoiLut, Window

PathLike = str | os.PathLike[str]

#: format name → reader. Add a format by registering a :class:`Reader` subclass here.
READERS: dict[str, Reader] = {
    "dicom": DicomReader(),
    "nifti": NiftiReader(),
    "png": PilReader("png"),
    "jpeg": PilReader("jpeg"),
    "npz": NpzReader(),
}

__all__ = [
    "DEFAULT_MAX_BYTES",
    "READERS",
    "SLICE_POLICIES",
    "Failed",
    "Frames",
    "Image",
    "ImageMeta",
    "Reader",
    "SlicePolicy",
    "Source",
    "VoiLut",
    "Window",
    "discover",
    "frames",
    "get_reader",
    "get_slice_policy",
    "load",
    "load_each",
    "max_image_bytes",
    "read",
    "read_frame",
    "read_meta",
    "sniff",
]


def get_reader(name: str) -> Reader:
    """The reader registered as ``name``; :class:`ConfigError` listing the valid names otherwise."""
    return look_up(READERS, name, "reader")


def frames(item: PathLike | Source, *, max_bytes: int | None = None, min_size: int | None = None) -> Frames:
    """The lazy frame sequence of a file or :class:`Source` (nothing decoded until indexed).

    Raises the :class:`~medclass.errors.InputError` subclass that says why the file is unusable.
    """
    if isinstance(item, Source):
        if item.format == "dicom-series":
            return SeriesFrames(item, limit=max_bytes)
        item = item.path
    path = os.fspath(item)
    return get_reader(sniff(path)).open(path, limit=max_bytes, min_size=min_size)


def load(
    source: Source, *, slice_policy: str | SlicePolicy = "all", max_bytes: int | None = None
) -> list[Image]:
    """The images of ``source`` chosen by ``slice_policy`` (see :data:`SLICE_POLICIES`).

    Raises :class:`ConfigError` for an unknown policy, an :class:`~medclass.errors.InputError` subclass
    for a bad file.
    """
    policy = get_slice_policy(slice_policy)
    fr = frames(source, max_bytes=max_bytes)
    return fr.take(policy(fr))


@dataclass(frozen=True)
class Failed:
    """An image that could not be loaded: ``path`` is the file to blame (for a series, the slice's own
    file), ``index`` the frame/slice index within the source (None when the source failed as a whole)."""

    path: str
    index: int | None
    error: Exception


def load_each(
    source: Source, *, slice_policy: str | SlicePolicy = "all", max_bytes: int | None = None
) -> Iterator[Image | Failed]:
    """The images of ``source`` chosen by ``slice_policy``, each on its own: an image that cannot be
    decoded comes as a :class:`Failed` (a corrupt slice of a series names its own file) and the others
    still come. When the source cannot be opened, or the policy needs every slice (``max-foreground``)
    and one is unusable, the source fails as a whole: one :class:`Failed`.

    For per-item commands (explain, preview); unexpected exceptions are handed back the same way, so
    that the caller reports them per item. Raises :class:`ConfigError` for an unknown policy only.
    """
    policy = get_slice_policy(slice_policy)
    try:
        fr = frames(source, max_bytes=max_bytes)
        indices = list(policy(fr))
    except Exception as exc:
        yield Failed(_blame(source, None, exc), None, exc)
        return
    try:
        images = fr.take(indices)  # one decode of a compressed multi-frame file, when nothing fails
    except Exception:
        images = None
    if images is not None:
        yield from images
        return
    for i in indices:  # something failed: each image alone, so that only the bad one fails
        try:
            image = fr[i]
        except Exception as exc:
            yield Failed(_blame(source, i, exc), i, exc)
            continue
        yield image


def _blame(source: Source, index: int | None, exc: Exception) -> str:
    path = getattr(exc, "path", None)
    if path:
        return str(path)
    if index is not None and source.format == "dicom-series":
        return source.paths[index]
    return source.path


def read(
    path: PathLike, *, slice_policy: str | SlicePolicy = "all", max_bytes: int | None = None
) -> list[Image]:
    """The images of one file (every frame by default; one per slice of a NIfTI volume or Siemens mosaic).

    Raises :class:`ConfigError` for an unknown policy, an :class:`~medclass.errors.InputError` subclass
    for a bad file (see :mod:`medclass.errors`).
    """
    policy = get_slice_policy(slice_policy)
    fr = frames(path, max_bytes=max_bytes)
    return fr.take(policy(fr))


def read_frame(
    path: PathLike, index: int, *, max_bytes: int | None = None, min_size: int | None = None
) -> Image:
    """Frame/slice ``index`` of one file (0 for a plain 2D image); only that frame is decoded when the
    format allows it. Raises :class:`ConfigError` when ``index`` is out of range.

    ``min_size``: the caller will shrink the image to about this side anyway (scoring at the model's input
    size), so a JPEG may be decoded at 1/2, 1/4 or 1/8 scale in the DCT domain as long as both sides stay
    ≥ ``min_size`` (``image.meta.decoded_scale`` says by how much). Leave it None where pixel geometry
    matters (saliency mapped back onto the original, previews).
    """
    return frames(path, max_bytes=max_bytes, min_size=min_size)[index]


def read_meta(path: PathLike, *, max_bytes: int | None = None) -> ImageMeta:
    """Metadata of the first frame of one file, from the header only (pixels are not decoded).

    Raises the same errors as :func:`read` for a file that is not an image (e.g. :class:`NoImageError`).
    """
    p = os.fspath(path)
    return get_reader(sniff(p)).read_meta(p, limit=max_bytes)
