"""Windowing: modality values → display values in 0..1, as DICOM PS3.3 C.11.2 defines it.

Three layers, each small:

* window *functions* (``WINDOW_FUNCTIONS``): ``LINEAR``, ``LINEAR_EXACT``, ``SIGMOID`` exactly as in
  PS3.3 C.11.2.1.2 / C.11.2.1.3, with the output range scaled to 0..1;
* *transforms* that apply one choice to pixels: :class:`WindowTransform` (centre/width) and
  :class:`VoiLutTransform` (a VOI LUT Sequence table), plus :class:`Invert` for MONOCHROME1;
* *policies* (``WINDOW_POLICIES``, :func:`window_policy`) that look at an :class:`Image` and choose the
  transform: ``auto``, ``header``, ``voi-lut``, ``percentile``, ``minmax``, the CT presets and explicit
  ``"C/W"`` numbers such as ``"-600/1500"``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Protocol

import numpy as np

from medclass.errors import ConfigError, look_up
from medclass.ingest.types import Image, VoiLut, Window

log = logging.getLogger(__name__)

# Percentiles are estimated on a regular grid of at most this many pixels (a 2048² radiograph is sampled
# every 4th row and column): 0.5 %/99.5 % of 262 144 samples are stable to well under one grey level,
# and it is ~13× faster than sorting 4 M pixels.
_PERCENTILE_SAMPLES = 1 << 18


# --- window functions (PS3.3 C.11.2.1.2 and C.11.2.1.3), output range 0..1 ---------------------------
def linear(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR: ``((x - (c - 0.5)) / (w - 1) + 0.5)`` clipped to 0..1.

    ``x <= c - 0.5 - (w-1)/2`` gives 0, ``x > c - 0.5 + (w-1)/2`` gives 1; a width of exactly 1 is a
    step at ``c - 0.5``. Returns float32. Raises :class:`ConfigError` for a width below 1.
    """
    if width < 1:
        raise ConfigError(f"LINEAR window width must be >= 1 (PS3.3 C.11.2.1.2.1), got {width:g}")
    x = np.asarray(x, dtype=np.float32)
    if width == 1:
        return (x > center - 0.5).astype(np.float32)
    scale = 1.0 / (width - 1.0)
    return _affine_clip(x, scale, 0.5 - (center - 0.5) * scale)


def linear_exact(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.3.2 LINEAR_EXACT: ``(x - c) / w + 0.5`` clipped to 0..1 (float32).

    Raises :class:`ConfigError` for a width <= 0.
    """
    if width <= 0:
        raise ConfigError(f"LINEAR_EXACT window width must be > 0 (PS3.3 C.11.2.1.3.2), got {width:g}")
    scale = 1.0 / width
    return _affine_clip(np.asarray(x, dtype=np.float32), scale, 0.5 - center * scale)


def sigmoid(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.3.1 SIGMOID: ``1 / (1 + exp(-4 (x - c) / w))`` (float32, never exactly 0 or 1).

    Raises :class:`ConfigError` for a width <= 0.
    """
    if width <= 0:
        raise ConfigError(f"SIGMOID window width must be > 0 (PS3.3 C.11.2.1.3.1), got {width:g}")
    z = (np.asarray(x, dtype=np.float64) - center) * (-4.0 / width)
    return (1.0 / (1.0 + np.exp(np.clip(z, -80.0, 80.0)))).astype(np.float32)


def _affine_clip(x: np.ndarray, scale: float, offset: float) -> np.ndarray:
    out = np.asarray(np.multiply(x, np.float32(scale), dtype=np.float32))  # 0-d stays an array
    out += np.float32(offset)
    np.clip(out, 0.0, 1.0, out=out)
    return out


WINDOW_FUNCTIONS: dict[str, Callable[[np.ndarray, float, float], np.ndarray]] = {
    "LINEAR": linear,
    "LINEAR_EXACT": linear_exact,
    "SIGMOID": sigmoid,
}


def voi_lut_output_bits(lut: VoiLut) -> int:
    """The bit depth the table's values actually use: the Descriptor's, unless the table stays below it.

    Many vendors declare 16 bits for a table that only reaches 4095 (PS3.3 C.11.2.1.1 allows 10–16);
    scaling such a table by 65535 would give an almost black image, so the output is scaled by the
    smallest ``2**b - 1 >= max(table)`` when that is below the declared depth (never below 8 bits).
    """
    peak = int(np.max(lut.table)) if lut.table.size else 0
    return max(8, min(int(lut.bits), max(peak, 1).bit_length()))


# --- transforms ----------------------------------------------------------------------------------------
class VoiTransform(Protocol):
    """Maps modality values (H×W float32) to display values in 0..1; ``window`` records what was used."""

    window: Window

    def __call__(self, pixels: np.ndarray) -> np.ndarray: ...


class WindowTransform:
    """Apply one :class:`Window` (centre/width and DICOM function) → H×W float32 in 0..1.

    Raises :class:`ConfigError` for an unknown VOI LUT Function or an invalid width.
    """

    def __init__(self, window: Window) -> None:
        function = (window.function or "LINEAR").upper()
        look_up(WINDOW_FUNCTIONS, function, "VOI LUT Function")
        self.window = window
        self._function = WINDOW_FUNCTIONS[function]

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self._function(pixels, self.window.center, self.window.width)

    def __repr__(self) -> str:
        w = self.window
        return f"WindowTransform(C={w.center:g}, W={w.width:g}, {w.function}, source={w.source!r})"


class VoiLutTransform:
    """Apply a VOI LUT Sequence table (PS3.3 C.11.2.1.1) → H×W float32 in 0..1.

    ``table[clip(floor(x) - first_mapped, 0, n - 1)] / (2**bits - 1)`` with ``bits`` from
    :func:`voi_lut_output_bits`. ``window`` describes the input range the table covers
    (centre/width of ``first_mapped .. first_mapped + n``), with ``source="voi-lut"``.
    """

    def __init__(self, lut: VoiLut) -> None:
        table = np.asarray(lut.table)
        if table.ndim != 1 or table.size == 0:
            raise ConfigError(f"VOI LUT table must be a non-empty 1-D array, got shape {table.shape}")
        self.lut = lut
        self._table = table.astype(np.float32) / np.float32(2 ** voi_lut_output_bits(lut) - 1)
        n = table.size
        self.window = Window(
            center=lut.first_mapped + n / 2.0,
            width=float(n),
            source="voi-lut",
            function="LUT",
            explanation=lut.explanation,
        )

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        index = np.floor(np.asarray(pixels, dtype=np.float64) - self.lut.first_mapped)
        np.clip(index, 0, self._table.size - 1, out=index)
        return self._table[index.astype(np.intp)]

    def __repr__(self) -> str:
        return f"VoiLutTransform(first_mapped={self.lut.first_mapped}, n={self._table.size})"


class Invert:
    """MONOCHROME1 → MONOCHROME2 after windowing: ``y' = 1 - y`` (float32, 0..1 stays 0..1)."""

    def __call__(self, display: np.ndarray) -> np.ndarray:
        return np.subtract(np.float32(1.0), display, dtype=np.float32)


# --- policies: Image → transform -----------------------------------------------------------------------
class WindowPolicy(Protocol):
    """Chooses how to window one image; raises :class:`ConfigError` when it cannot."""

    def __call__(self, image: Image) -> VoiTransform: ...


def _valid(image: Image) -> np.ndarray:
    """The unmasked, finite pixels on a regular grid of at most ``_PERCENTILE_SAMPLES`` (1-D)."""
    pixels, mask = image.pixels, image.mask
    step = max(1, int(np.ceil(np.sqrt(pixels.size / _PERCENTILE_SAMPLES))))
    if step > 1:
        pixels = pixels[::step, ::step]
        mask = None if mask is None else mask[::step, ::step]
    values = pixels[mask] if mask is not None else pixels.ravel()
    finite = np.isfinite(values)
    return values if finite.all() else values[finite]


def _range_window(lo: float, hi: float, source: str, explanation: str) -> WindowTransform:
    # LINEAR_EXACT maps lo → 0 and hi → 1 exactly; a flat image (lo == hi) becomes mid-grey.
    width = hi - lo if hi > lo else 1.0
    return WindowTransform(Window((lo + hi) / 2.0, width, source, "LINEAR_EXACT", explanation))


class PercentileWindow:
    """Robust range: ``low``–``high`` percentiles of the real (unmasked, finite) pixels → 0..1.

    Padding (``mask`` False) never enters the statistics. Raises :class:`ConfigError` for percentiles
    outside 0..100 or ``low >= high``.
    """

    def __init__(self, low: float = 0.5, high: float = 99.5) -> None:
        if not 0.0 <= low < high <= 100.0:
            raise ConfigError(f"percentile window needs 0 <= low < high <= 100, got {low:g}, {high:g}")
        self.low, self.high = float(low), float(high)

    def __call__(self, image: Image) -> VoiTransform:
        values = _valid(image)
        if values.size == 0:
            lo = hi = 0.0
        else:
            lo, hi = (float(v) for v in np.percentile(values, [self.low, self.high]))
        return _range_window(lo, hi, "percentile", f"p{self.low:g}–p{self.high:g}")


class MinMaxWindow:
    """The full range of the real pixels (minimum → 0, maximum → 1)."""

    def __call__(self, image: Image) -> VoiTransform:
        values = image.pixels if image.mask is None else image.pixels[image.mask]
        values = values[np.isfinite(values)] if values.size else values
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        return _range_window(lo, hi, "range", "min–max")


class HeaderWindow:
    """The header's Window Center/Width number ``index`` (0 = the default one) with its function.

    Raises :class:`ConfigError` naming the file when the header has no such window.
    """

    def __init__(self, index: int = 0) -> None:
        self.index = int(index)

    def __call__(self, image: Image) -> VoiTransform:
        windows = image.meta.windows
        if self.index >= len(windows):
            have = f"only {len(windows)}" if windows else "no Window Center/Width"
            raise ConfigError(
                f"window 'header' needs header window {self.index}, the file has {have}; "
                "use --window auto, percentile or a preset",
                image.meta.source,
            )
        return WindowTransform(windows[self.index])


class VoiLutWindow:
    """The header's VOI LUT Sequence table. Raises :class:`ConfigError` naming the file when absent."""

    def __call__(self, image: Image) -> VoiTransform:
        if image.meta.voi_lut is None:
            raise ConfigError(
                "window 'voi-lut' needs a VOI LUT Sequence, the file has none; use --window auto",
                image.meta.source,
            )
        return VoiLutTransform(image.meta.voi_lut)


class FixedWindow:
    """A fixed centre/width in modality units (a named CT preset or explicit ``C/W`` numbers)."""

    def __init__(self, center: float, width: float, source: str = "manual", function: str = "LINEAR") -> None:
        self.window = Window(float(center), float(width), source, function)
        WindowTransform(self.window)(np.zeros(1, np.float32))  # validate now, not on the first image

    def __call__(self, image: Image) -> VoiTransform:
        if self.window.source.startswith("preset:") and image.meta.modality not in ("", "CT"):
            log.warning(
                "%s: CT preset %s (Hounsfield units) applied to a %s image",
                image.meta.source,
                self.window.source[7:],
                image.meta.modality,
            )
        return WindowTransform(self.window)


class AutoWindow:
    """What the file asks for: its VOI LUT Sequence, else its first header window, else percentiles."""

    def __init__(self, fallback: WindowPolicy | None = None) -> None:
        self.fallback = fallback or PercentileWindow()

    def __call__(self, image: Image) -> VoiTransform:
        if image.meta.voi_lut is not None:
            return VoiLutTransform(image.meta.voi_lut)
        if image.meta.windows:
            return WindowTransform(image.meta.windows[0])
        return self.fallback(image)


# Centre/width in Hounsfield units. Lung, mediastinum, brain: Radiopaedia "Windowing (CT)"; abdomen:
# soft-tissue window 40/400; bone: Radiopaedia's 400/1800 (some sites use 500/2000: pass "500/2000").
CT_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}

WINDOW_POLICIES: dict[str, WindowPolicy] = {
    "auto": AutoWindow(),
    "header": HeaderWindow(),
    "voi-lut": VoiLutWindow(),
    "percentile": PercentileWindow(),
    "minmax": MinMaxWindow(),
    **{name: FixedWindow(c, w, f"preset:{name}") for name, (c, w) in CT_PRESETS.items()},
}

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)"
_CW = re.compile(rf"^\s*({_NUMBER})\s*/\s*({_NUMBER})\s*$")
_PCT = re.compile(rf"^percentile:\s*({_NUMBER})\s*,\s*({_NUMBER})\s*$")
_HEADER = re.compile(r"^header:(\d+)$")


def window_policy(name: str | WindowPolicy) -> WindowPolicy:
    """Resolve a window setting to a policy.

    Accepts a policy callable, a name from ``WINDOW_POLICIES``, ``"C/W"`` numbers (``"-600/1500"``),
    ``"percentile:LOW,HIGH"`` (``"percentile:1,99"``) or ``"header:N"`` (the N-th header window).
    Raises :class:`ConfigError` listing the valid names for anything else.
    """
    if callable(name):
        return name
    key = str(name).strip().lower()
    if key in WINDOW_POLICIES:
        return WINDOW_POLICIES[key]
    if m := _CW.match(key):
        return FixedWindow(float(m.group(1)), float(m.group(2)), "manual")
    if m := _PCT.match(key):
        return PercentileWindow(float(m.group(1)), float(m.group(2)))
    if m := _HEADER.match(key):
        return HeaderWindow(int(m.group(1)))
    raise ConfigError(
        f"unknown window {name!r}; valid: {', '.join(WINDOW_POLICIES)}, "
        "'C/W' numbers like '-600/1500', 'percentile:LOW,HIGH', 'header:N'"
    )


def window_name(window: Window) -> str:
    """A short human label: ``'header C=40 W=400 LINEAR'``, ``'preset:lung C=-600 W=1500 LINEAR'``."""
    if window.source == "voi-lut":
        return f"voi-lut ({window.explanation or 'table'})"
    return f"{window.source} C={window.center:.4g} W={window.width:.4g} {window.function}"
