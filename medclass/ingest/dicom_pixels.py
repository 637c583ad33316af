"""DICOM pixel semantics after decoding: padding, the modality LUT, colour.

:func:`padding_mask` marks Pixel Padding Value (or range) pixels, :func:`to_modality` applies the
modality LUT (Rescale Slope/Intercept, per frame for enhanced objects, or a Modality LUT Sequence) and
:func:`to_rgb` turns PALETTE COLOR / YBR / RGB frames into RGB in 0..255.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medclass.errors import CorruptFileError, InvalidPixelDataError
from medclass.errors import short_message as _one_line
from medclass.ingest import dicom_meta as dm


def padding_mask(ds: Any, stored: np.ndarray) -> np.ndarray | None:
    """False where ``stored`` equals Pixel Padding Value (or lies in the padding range); None if no padding."""
    pad = ds.get("PixelPaddingValue")
    if pad is None or stored.ndim != 2:
        return None
    pad = int(pad)
    limit = ds.get("PixelPaddingRangeLimit")
    if limit is None:
        padded = stored == pad
    else:
        lo, hi = sorted((pad, int(limit)))
        padded = (stored >= lo) & (stored <= hi)
    if not padded.any():
        return None
    return ~padded


def to_modality(ds: Any, index: int, stored: np.ndarray, path: str = "") -> np.ndarray:
    """Stored values of frame ``index`` → modality values (float32).

    Raises :class:`InvalidPixelDataError` for a non-finite rescale slope or intercept.
    """
    hdr = dm.frame_header(ds, index)
    if hdr.has_modality_lut_seq:
        from pydicom.pixels import apply_modality_lut

        return np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    if not (math.isfinite(hdr.slope) and math.isfinite(hdr.intercept)):
        raise InvalidPixelDataError(
            f"rescale slope/intercept {hdr.slope}/{hdr.intercept} not finite", path or None
        )
    if hdr.slope == 1.0:  # one pass over the data: convert and shift together
        if hdr.intercept == 0.0:
            return stored.astype(np.float32)
        return np.add(stored, np.float32(hdr.intercept), dtype=np.float32)
    out = np.multiply(stored, np.float32(hdr.slope), dtype=np.float32)
    if hdr.intercept != 0.0:
        out += np.float32(hdr.intercept)
    return out


def to_rgb(ds: Any, arr: np.ndarray, photometric_out: str, path: str) -> np.ndarray:
    """A colour frame → H×W×3 float32 RGB in 0..255."""
    from pydicom.pixels import apply_color_lut, convert_color_space

    if photometric_out == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(arr, ds)
        except Exception as exc:
            raise CorruptFileError(f"PALETTE COLOR lookup table unusable ({_one_line(exc)})", path) from exc
        top = 255.0 if rgb.dtype == np.uint8 else 65535.0
        return (rgb.astype(np.float32) * np.float32(255.0 / top)).astype(np.float32)
    if photometric_out in ("YBR_FULL", "YBR_FULL_422"):
        arr = convert_color_space(arr, photometric_out, "RGB")
    elif photometric_out != "RGB":
        raise InvalidPixelDataError(f"colour space {photometric_out} is not supported", path)
    bits = int(ds.get("BitsStored", 8) or 8)
    out = arr.astype(np.float32)
    if bits > 8:
        out *= np.float32(255.0 / (2**bits - 1))
    return out
