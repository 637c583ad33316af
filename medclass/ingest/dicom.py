"""DICOM files → float32 frames, with pydicom as the only decoder.

Pixel semantics, in order, per frame:

1. pydicom decodes (``raw=False``): it masks the unused high bits and sign-extends signed data for
   native, RLE and JPEG syntaxes (``correct_unused_bits``) and fixes JPEG 2000/JPEG-LS signedness, and it
   converts YBR_FULL/YBR_FULL_422 to RGB (JPEG 2000 decoders already return RGB for YBR_ICT/YBR_RCT).
   We do not mask again.
2. Padding: stored values equal to Pixel Padding Value (or within it and Pixel Padding Range Limit)
   become False in ``mask``; compared on stored values, before the modality LUT.
3. Modality LUT: Modality LUT Sequence if present (pydicom's ``apply_modality_lut``), else rescale
   slope/intercept of the frame (Pixel Value Transformation functional group for enhanced objects).
4. Colour: PALETTE COLOR through pydicom's ``apply_color_lut``; RGB scaled to 0..255 whatever the bit
   depth. MONOCHROME1 is *not* inverted (``meta.photometric`` says so; preprocess inverts for display).
5. Siemens MOSAIC (one 2D image holding a volume's slices as tiles) is split into its slices.

Every pydicom/plugin exception is turned into a :mod:`medclass.errors` error naming the file.
Steps 2-4 live in :mod:`medclass.ingest.dicom_pixels`, the JPEG scan-header repair in
:mod:`medclass.ingest.jpeg_repair`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from medclass.errors import (
    CorruptFileError,
    InvalidPixelDataError,
    MedclassError,
    MissingDecoderError,
    NoImageError,
    UnreadableFileError,
    UnsupportedFormatError,
)
from medclass.errors import short_message as _one_line
from medclass.ingest import dicom_meta as dm
from medclass.ingest.base import Frames, Reader, check_readable, check_size, finite_or_mask
from medclass.ingest.dicom_pixels import padding_mask, to_modality, to_rgb
from medclass.ingest.jpeg_repair import repaired_jpeg
from medclass.ingest.mosaic import mosaic_layout
from medclass.ingest.types import Image, ImageMeta

log = logging.getLogger(__name__)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_INSTALL_HINT = "install pylibjpeg-libjpeg (JPEG, JPEG-LS), pylibjpeg-openjpeg (JPEG 2000) or python-gdcm"


class _CappedReader(io.BufferedReader):
    """A binary file whose ``read(n)`` never asks for more than what is left of the file.

    pydicom reads an element's value with ``read(declared length)``, and ``BufferedReader.read(n)``
    allocates ``n`` bytes before reading: a corrupt length field (up to 4 GiB) in a small file would
    reserve gigabytes (a MemoryError under a memory limit). Capped, the read just comes back short.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(io.FileIO(os.fspath(path), "r"))
        self._size = os.fstat(self.fileno()).st_size

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size > 0:
            size = max(0, min(size, self._size - self.tell()))
        return super().read(size)


def _pydicom_read(p: Path, header_only: bool, force: bool = False) -> Any:
    import pydicom

    with _CappedReader(p) as fh:  # a deferred value is read later by reopening the file by its name
        return pydicom.dcmread(fh, defer_size="4 KB" if header_only else None, force=force)


def dcmread(path: str, *, header_only: bool = False) -> Any:
    """Read a DICOM file with pydicom; pixel data are deferred when ``header_only``.

    Raises :class:`UnreadableFileError`, :class:`UnsupportedFormatError` (not DICOM) or
    :class:`CorruptFileError` (truncated or malformed, or a declared element length that cannot be
    allocated); pydicom's own exceptions never escape.
    """
    from pydicom.errors import InvalidDicomError

    p = check_readable(path)
    try:
        with _pydicom_warnings_to_log(path):
            try:
                ds = _pydicom_read(p, header_only)
            except InvalidDicomError:
                # no preamble/"DICM": accept it only if it starts like a raw DICOM data set
                from medclass.ingest.base import head_bytes
                from medclass.ingest.sniff import _looks_like_raw_dicom

                if not _looks_like_raw_dicom(head_bytes(p, 8)):
                    raise
                ds = _pydicom_read(p, header_only, force=True)
            _ensure_transfer_syntax(ds)
            return ds
    except MemoryError:
        raise CorruptFileError(
            "a declared element length exceeds the memory available (corrupt length field?)", path
        ) from None
    except InvalidDicomError as exc:
        raise UnsupportedFormatError(f"not a DICOM file ({_one_line(exc)})", path) from exc
    except PermissionError:
        raise UnreadableFileError("permission denied", path) from None
    except (EOFError, OSError) as exc:
        raise CorruptFileError(f"truncated or unreadable DICOM ({_one_line(exc)})", path) from exc
    except Exception as exc:  # pydicom raises ValueError/KeyError/struct.error on broken headers
        raise CorruptFileError(f"malformed DICOM ({type(exc).__name__}: {_one_line(exc)})", path) from exc


@contextlib.contextmanager
def _pydicom_warnings_to_log(path: str | Path) -> Iterator[None]:
    """pydicom's warnings about one file (VR guesses, excess padding) go to the debug log with its name."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        log.debug("%s: %s", path, w.message)


def _ensure_transfer_syntax(ds: Any) -> None:
    """A data set read without file meta gets the transfer syntax it was actually read with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        return
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    if implicit:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _has_pixels(ds: Any) -> bool:
    return any(k in ds for k in _PIXEL_KEYWORDS)


def check_is_image(ds: Any, path: str) -> None:
    """Raise :class:`NoImageError` unless ``ds`` is a diagnostic image with pixel data."""
    sop = dm.sop_class(ds)
    reason = dm.non_image_reason(sop)
    if reason:
        raise NoImageError(reason, path)
    if not _has_pixels(ds) and not sop and "Modality" not in ds:
        raise CorruptFileError(
            "not a usable DICOM data set (no SOP Class UID, no Modality, no Pixel Data)", path
        )
    if not _has_pixels(ds):
        raise NoImageError(f"no image (SOP class {dm.sop_class_name(sop)}, no Pixel Data)", path)


def _declared_shape(ds: Any, path: str) -> tuple[tuple[int, ...], float]:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 16) or 16)
    except (AttributeError, TypeError, ValueError) as exc:
        missing = [k for k in ("Rows", "Columns") if k not in ds]
        what = f"no {' or '.join(missing)}" if missing else _one_line(exc)
        raise CorruptFileError(f"has pixel data but the image header is incomplete ({what})", path) from None
    if rows <= 0 or cols <= 0:
        raise InvalidPixelDataError(f"declared size {rows}x{cols} is empty", path)
    frames = dm.number_of_frames(ds)
    shape = (frames, rows, cols) + ((samples,) if samples > 1 else ())
    return shape, max(bits, 1) / 8


def _decoder(ds: Any, path: str) -> Any:
    from pydicom.pixels import get_decoder

    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None:
        raise CorruptFileError("no Transfer Syntax UID in the file meta", path)
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise MissingDecoderError(
            f"transfer syntax {ts.name} ({ts}) has no pixel decoder in pydicom; convert the file "
            "(e.g. dcmdjpeg/gdcmconv) or install a plugin that supports it",
            path,
        ) from None
    if not decoder.is_available:
        missing = "; ".join(str(m) for m in decoder.missing_dependencies)
        raise MissingDecoderError(f"{ts.name} pixel data needs a decoder; {_INSTALL_HINT} ({missing})", path)
    return decoder


#: Plugins tried in this order (the first that succeeds wins). python-gdcm is left out whenever another
#: plugin can decode the syntax: on damaged JPEG data it throws a C++ exception that aborts the whole
#: Python process instead of raising. Pillow (libjpeg-turbo) is the fastest for 8-bit JPEG baseline.
PLUGIN_ORDER: dict[str, tuple[str, ...]] = {
    "1.2.840.10008.1.2.4.50": ("pillow", "pylibjpeg"),  # JPEG Baseline 8-bit
}
DEFAULT_PLUGIN_ORDER = ("pylibjpeg", "pyjpegls", "pillow", "pydicom")
UNSAFE_PLUGINS = frozenset({"gdcm"})


def plugin_order(decoder: Any, ts: str) -> list[str]:
    """The plugins to try for transfer syntax ``ts`` (empty: let pydicom pick, e.g. native data)."""
    available = tuple(getattr(decoder, "available_plugins", ()) or ())
    preferred = PLUGIN_ORDER.get(str(ts), DEFAULT_PLUGIN_ORDER)
    safe = [p for p in preferred if p in available]
    safe += [p for p in available if p not in safe and p not in UNSAFE_PLUGINS]
    return safe or list(available)


#: JPEG syntaxes whose frames are sequential DCT (SOF0/SOF1): see :mod:`medclass.ingest.jpeg_repair`
_SEQUENTIAL_JPEG = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")


def _decode(ds: Any, path: str, index: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    """Decoded stored values (one frame or all) and pydicom's pixel properties after processing.

    Raises :class:`MissingDecoderError` (no installed plugin supports the data, e.g. 12-bit JPEG
    Extended with Pillow alone) or :class:`CorruptFileError` (every plugin failed: the message lists why).
    """
    from pydicom.pixels.utils import as_pixel_options

    decoder = _decoder(ds, path)
    ts = ds.file_meta.TransferSyntaxUID
    plugins = plugin_order(decoder, ts) if ts.is_compressed else []
    with _pydicom_warnings_to_log(path):
        opts = as_pixel_options(ds)
    result, failures = _try_plugins(decoder, ds, index, plugins, opts, path)
    if result is not None:
        return result
    if str(ts) in _SEQUENTIAL_JPEG:
        repaired = repaired_jpeg(ds, opts)
        if repaired is not None:
            result, _ = _try_plugins(decoder, repaired, index, plugins, opts, path)
            if result is not None:
                log.warning(
                    "%s: JPEG scan header is not that of a sequential JPEG (Ss/Se/Ah/Al); decoded as "
                    "sequential, as libjpeg 6b does",
                    path,
                )
                return result
    if failures and all("does not support" in f for f in failures):
        bits = opts.get("bits_stored", "?")
        raise MissingDecoderError(
            f"no installed plugin decodes {ts.name} with {bits}-bit samples; install pylibjpeg-libjpeg "
            f"({'; '.join(failures)})",
            path,
        )
    raise CorruptFileError(f"pixel data cannot be decoded ({'; '.join(failures)})", path)


def _try_plugins(
    decoder: Any, src: Any, index: int | None, plugins: list[str], opts: dict[str, Any], path: str
) -> tuple[tuple[np.ndarray, dict[str, Any]] | None, list[str]]:
    """The first plugin's ``(array, properties)`` that decodes ``src`` (a data set or encapsulated
    pixel data), else None and why each failed. Raises :class:`MissingDecoderError`."""
    ts = decoder.UID
    failures = []
    for plugin in plugins or [""]:
        try:
            with _pydicom_warnings_to_log(path):
                return decoder.as_array(src, index=index, raw=False, decoding_plugin=plugin, **opts), []
        except (MemoryError, KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # RuntimeError/ValueError for broken data; Rust plugins panic
            msg = _one_line(exc) or type(exc).__name__
            if "missing dependencies" in msg or "plugins are missing" in msg:
                raise MissingDecoderError(f"cannot decode {ts.name}; {_INSTALL_HINT}", path) from exc
            msg = msg.removeprefix("Unable to decode as exceptions were raised by all available plugins: ")
            failures.append(f"{plugin}: {msg.removeprefix(plugin + ': ')}" if plugin else msg)
    return None, failures


class DicomFrames(Frames):
    """The frames of one DICOM file (a Siemens MOSAIC gives one frame per tile)."""

    def __init__(self, path: str, ds: Any, *, limit: int | None = None) -> None:
        check_is_image(ds, path)
        shape, nbytes = _declared_shape(ds, path)
        check_size(path, shape, nbytes, limit)
        self.ds = ds
        self.shape = shape
        self.mosaic = mosaic_layout(ds, path) if shape[0] == 1 and len(shape) == 3 else None
        super().__init__(path, self.mosaic.n if self.mosaic else shape[0])
        self._all: tuple[np.ndarray, dict[str, Any]] | None = None
        self._base: ImageMeta | None = None

    def meta(self, index: int) -> ImageMeta:
        i = self._check(index)
        if self._base is None:  # file-level values are read once; frames differ in geometry/windows
            first = self.mosaic.meta(self.ds, self.path, 0, self.shape) if self.mosaic else None
            self._base = first or dm.build_meta(
                self.ds, self.path, index=0, n_frames=self.n, original_shape=self.shape
            )
        if i == 0:
            return self._base
        if self.mosaic:
            pos = self.mosaic.positions[i] if self.mosaic.positions else None
            return dataclasses.replace(self._base, index=i, slice_position=pos)
        return dm.frame_meta(self._base, self.ds, i)

    def _get_many(self, indices: list[int]) -> list[Image]:
        try:
            with _pydicom_warnings_to_log(self.path):
                if self.mosaic or (len(indices) > 1 and self._all is None):
                    self._decode_all()
                return [self._get(i) for i in indices]
        except (MedclassError, MemoryError):
            raise
        except Exception as exc:  # a header value the pixel pipeline cannot use
            raise CorruptFileError(
                f"unusable pixel module ({type(exc).__name__}: {_one_line(exc)})", self.path
            ) from exc

    def _decode_all(self) -> None:
        if self._all is None:
            arr, props = _decode(self.ds, self.path, None)
            if self.shape[0] == 1 or self.mosaic:
                arr = arr[None]
            self._all = (arr, props)

    def _get(self, index: int) -> Image:
        if self._all is not None:
            arr, props = self._all
            stored = arr[0] if self.mosaic else arr[index]
        else:
            stored, props = _decode(self.ds, self.path, index)
        if self.mosaic:
            stored = self.mosaic.tile(stored, index)
        frame = 0 if self.mosaic else index
        photometric = str(
            props.get("photometric_interpretation", self.ds.get("PhotometricInterpretation", ""))
        )
        if stored.ndim == 3 or photometric == "PALETTE COLOR":
            pixels = to_rgb(self.ds, stored, photometric, self.path)
            mask = None
        else:
            mask = padding_mask(self.ds, stored)
            pixels = to_modality(self.ds, frame, stored, self.path)
        if stored.dtype.kind == "f":  # integers through a finite rescale/LUT stay finite
            pixels, mask = finite_or_mask(pixels, mask, self.path)
        return Image(pixels=np.ascontiguousarray(pixels, dtype=np.float32), meta=self.meta(index), mask=mask)


class DicomReader(Reader):
    """DICOM by content (preamble or not, any extension)."""

    format = "dicom"

    def open(self, path: str, *, limit: int | None = None, min_size: int | None = None) -> Frames:
        ds = dcmread(path)
        try:
            with _pydicom_warnings_to_log(path):
                return DicomFrames(str(path), ds, limit=limit)
        except MedclassError:
            raise
        except Exception as exc:  # a header value pydicom cannot parse
            raise CorruptFileError(
                f"malformed DICOM header ({type(exc).__name__}: {_one_line(exc)})", path
            ) from exc

    def read_meta(self, path: str, *, limit: int | None = None) -> ImageMeta:
        ds = dcmread(path, header_only=True)
        try:
            with _pydicom_warnings_to_log(path):
                return self._meta(ds, str(path))
        except MedclassError:
            raise
        except Exception as exc:
            raise CorruptFileError(
                f"malformed DICOM header ({type(exc).__name__}: {_one_line(exc)})", path
            ) from exc

    def _meta(self, ds: Any, path: str) -> ImageMeta:
        check_is_image(ds, path)
        shape, _ = _declared_shape(ds, path)
        mosaic = mosaic_layout(ds, path) if shape[0] == 1 and len(shape) == 3 else None
        if mosaic:
            return mosaic.meta(ds, path, 0, shape)
        return dm.build_meta(ds, path, index=0, n_frames=shape[0], original_shape=shape)
