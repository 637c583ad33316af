"""PNG and JPEG files via Pillow → one grey (H×W) or RGB (H×W×3) float32 image.

Values are kept as stored: 8-bit grey 0..255, 16-bit grey PNG 0..65535 (``bits_stored`` 16), RGB
0..255. An RGB file stays RGB even when its three channels are equal (``meta.photometric`` is ``RGB``;
the preprocessor decides what to do with it). Palette, grey+alpha and RGBA images drop the alpha
channel; CMYK becomes RGB. The EXIF orientation tag is applied, so pixels look as a viewer shows them.

Pillow zero-fills the rows of a PNG whose (well-formed) compressed data ends before the height its
header declares; :func:`png_missing_rows` catches that, and the file is refused as corrupt.
"""

from __future__ import annotations

import dataclasses
import struct
import warnings
import zlib

import numpy as np

from medclass.errors import (
    CorruptFileError,
    ImageTooLargeError,
    InvalidPixelDataError,
    MedclassError,
    short_message,
)
from medclass.ingest.base import Frames, ListFrames, Reader, check_readable, check_size
from medclass.ingest.types import Image, ImageMeta

_BITS = {
    "1": 1,
    "L": 8,
    "P": 8,
    "LA": 8,
    "RGB": 8,
    "RGBA": 8,
    "CMYK": 8,
    "YCbCr": 8,
    "I;16": 16,
    "I;16B": 16,
    "I;16L": 16,
}


def _open(path: str):
    from PIL import Image as PILImage

    p = check_readable(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            return PILImage.open(p)
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image dimensions too large ({exc})", path) from None
    except Exception as exc:  # UnidentifiedImageError, OSError
        raise CorruptFileError(f"cannot open image ({short_message(exc, 160)})", path) from exc


# PNG colour type → samples per pixel; Adam7 passes as (x0, y0, dx, dy)
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PNG_SIG = b"\x89PNG\r\n\x1a\n"


def png_missing_rows(data: bytes) -> str | None:
    """What is missing when the PNG's image data inflates to fewer bytes than its IHDR needs
    (``"… 40 of 100000 rows"``), else None (also None for anything this does not understand: Pillow
    judges those).

    Rows are counted for a non-interlaced image, bytes of filtered data for an interlaced one.
    """
    if not data.startswith(_PNG_SIG) or data[12:16] != b"IHDR" or len(data) < 33:
        return None
    width, height, depth, ctype, _comp, _filt, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if ctype not in _PNG_SAMPLES or not width or not height:
        return None
    bpp = _PNG_SAMPLES[ctype] * depth

    def need(w: int, h: int) -> int:
        return h * (1 + (w * bpp + 7) // 8) if w and h else 0

    if interlace:
        passes = [
            need(max(0, -(-(width - x0) // dx)), max(0, -(-(height - y0) // dy))) for x0, y0, dx, dy in _ADAM7
        ]
        expected = sum(passes)
    else:
        expected = need(width, height)
    inflater = zlib.decompressobj()
    got = 0
    pos = 8
    try:
        while pos + 8 <= len(data) and got < expected:
            length, ctype_bytes = struct.unpack(">I4s", data[pos : pos + 8])
            if ctype_bytes == b"IEND":
                break
            if ctype_bytes == b"IDAT":
                chunk = data[pos + 8 : pos + 8 + length]
                while chunk and got < expected:  # inflate in bounded pieces: never holds the image
                    got += len(inflater.decompress(chunk, 1 << 20))
                    chunk = inflater.unconsumed_tail
                if inflater.eof:
                    break
            pos += 12 + length
    except zlib.error:
        return None  # broken stream: Pillow's own error says so
    if got >= expected:
        return None
    if interlace:
        return f"{got} of {expected} bytes of interlaced data"
    return f"{got // (1 + (width * bpp + 7) // 8)} of {height} rows"


def _check_png_complete(path: str) -> None:
    """Raises :class:`CorruptFileError` when the PNG's image data is shorter than its header declares."""
    from pathlib import Path

    missing = png_missing_rows(Path(path).read_bytes())
    if missing is not None:
        raise CorruptFileError(f"image data ends after {missing} the PNG header declares", path)


def _meta(path: str, fmt: str, photometric: str, shape: tuple[int, ...], bits: int) -> ImageMeta:
    return ImageMeta(
        source=str(path),
        format=fmt,
        photometric=photometric,
        original_shape=shape,
        bits_stored=bits,
    )


def _photometric(mode: str) -> str:
    return "MONOCHROME2" if mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") else "RGB"


class PilReader(Reader):
    """PNG/JPEG (and anything Pillow opens that :func:`~medclass.ingest.sniff.sniff` let through)."""

    def __init__(self, fmt: str) -> None:
        self.format = fmt

    def read_meta(self, path: str, *, limit: int | None = None) -> ImageMeta:
        im = _open(path)
        with im:
            w, h = im.size
            photometric = _photometric(im.mode)
            shape = (h, w) if photometric == "MONOCHROME2" else (h, w, 3)
            return _meta(path, self.format, photometric, shape, _BITS.get(im.mode, 16))

    def open(self, path: str, *, limit: int | None = None, min_size: int | None = None) -> Frames:
        from PIL import ImageOps

        im = _open(path)
        with im:
            w, h = im.size
            check_size(path, (h, w, 3), 1, limit)
            try:
                scale, full_hw = 1.0, (h, w)
                if min_size and self.format == "jpeg" and min(w, h) >= 2 * min_size:
                    # DCT-domain downscale by 1/2, 1/4 or 1/8 while both sides stay ≥ min_size: the decoder
                    # skips most of the inverse DCT work (several times faster on a radiograph)
                    drafted = im.draft(im.mode, (min_size, min_size))
                    scale = drafted[1][2] / w if drafted else 1.0  # box = original size / scale
                    if im.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientation that turns by 90°
                        full_hw = (w, h)
                im = ImageOps.exif_transpose(im) or im
                mode = im.mode
                if mode in ("P", "PA", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGB")
                elif mode == "LA" or mode == "1":
                    im = im.convert("L")
                arr = np.asarray(im)
                if self.format == "png":
                    _check_png_complete(path)
            except MedclassError:
                raise
            except Exception as exc:  # truncated data shows up here, at load time
                raise CorruptFileError(
                    f"image data cannot be decoded ({short_message(exc, 160)})", path
                ) from exc
        bits = _BITS.get(mode, 16)
        if arr.ndim == 3:
            arr = arr[..., :3]
            photometric = "RGB"
        elif arr.ndim == 2:
            photometric = "MONOCHROME2"
            if arr.dtype == np.uint16 or (arr.dtype == np.int32 and arr.max(initial=0) > 255):
                bits = 16
        else:
            raise InvalidPixelDataError(f"unexpected image array shape {arr.shape}", path)
        pixels = arr.astype(np.float32)
        if not np.isfinite(pixels).all():
            raise InvalidPixelDataError("non-finite pixel values", path)
        meta = _meta(path, self.format, photometric, tuple(arr.shape), bits)
        if scale != 1.0:  # original_shape stays the file's (EXIF-transposed) shape
            full = full_hw + tuple(arr.shape[2:])
            meta = dataclasses.replace(meta, original_shape=full, decoded_scale=scale)
        image = Image(pixels=pixels, meta=meta)
        return ListFrames(str(path), 1, lambda _i: image)
