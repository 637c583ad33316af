"""From a map at the model input to a picture on the original image.

The saliency map is computed on the model's S×S input; :func:`to_original` maps it back through the
recorded letterbox/resize (``Geometry.to_original`` from :mod:`medclass.preprocess`) onto the original
pixel grid and orientation. :class:`Overlay` blends it, through a colour map, over the windowed original
(``display_image``) and outlines the top-k% region; :func:`overlay_figure_png` adds a colour bar.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from scipy import ndimage

from medclass.errors import ConfigError, DataError, look_up

# name -> matplotlib colour map. "jet" is what radiologists have seen for years; the others are
# perceptually uniform (equal steps of saliency look like equal steps of colour).
COLORMAPS: dict[str, str] = {
    "jet": "jet",
    "turbo": "turbo",
    "viridis": "viridis",
    "inferno": "inferno",
    "magma": "magma",
    "plasma": "plasma",
}


def to_original(saliency: np.ndarray, geometry: Any) -> np.ndarray:
    """The S×S ``saliency`` map on the original H×W pixel grid (``geometry.to_original``), clipped to 0..1.

    Raises :class:`DataError` when the map is not 2D or the geometry returns something of another rank.
    """
    if saliency.ndim != 2:
        raise DataError(f"expected a 2D saliency map, got shape {saliency.shape}")
    out = np.asarray(geometry.to_original(saliency.astype(np.float32)), dtype=np.float32)
    if out.ndim != 2:
        raise DataError(f"geometry returned a map of shape {out.shape}, expected H×W")
    return np.clip(out, 0.0, 1.0)


def top_region(saliency: np.ndarray, top_percent: float) -> np.ndarray:
    """Boolean mask of the ``top_percent`` % highest-saliency pixels (ties included).

    Raises :class:`ConfigError` unless 0 < ``top_percent`` ≤ 100.
    """
    if not 0 < top_percent <= 100:
        raise ConfigError(f"top-percent must be in (0, 100], got {top_percent}")
    threshold = np.percentile(saliency, 100.0 - top_percent)
    return saliency >= threshold


def outline(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """The boundary pixels of ``mask`` (``thickness`` pixels wide, inside the region)."""
    if not mask.any():
        return mask.copy()
    inner = ndimage.binary_erosion(mask, iterations=max(1, thickness), border_value=0)
    return mask & ~inner


def colorize(saliency: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """H×W saliency in 0..1 → H×W×3 float32 RGB in 0..1 through ``colormap`` (a :data:`COLORMAPS` key)."""
    from matplotlib import colormaps

    cmap = colormaps[look_up(COLORMAPS, colormap, "colour map")]
    return cmap(np.clip(saliency, 0, 1))[..., :3].astype(np.float32)


def to_rgb8(display: np.ndarray) -> np.ndarray:
    """A 0..1 grey (H×W) or RGB (H×W×3) display image as H×W×3 uint8."""
    img = np.clip(np.asarray(display, dtype=np.float32), 0, 1)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise DataError(f"expected an H×W or H×W×3 display image, got shape {img.shape}")
    return np.round(img * 255).astype(np.uint8)


class Overlay:
    """Blend a saliency map over a display image and outline its top region.

    ``opacity`` (0..1) is the weight of the colour layer; ``top_percent`` the size of the outlined region
    (None: no outline); ``outline_rgb`` its colour. Call with ``(display H×W[×3] 0..1, saliency H×W 0..1)``
    on the same grid; returns H×W×3 uint8.
    """

    def __init__(
        self,
        colormap: str = "jet",
        opacity: float = 0.4,
        top_percent: float | None = 10.0,
        outline_rgb: tuple[int, int, int] = (255, 255, 255),
    ) -> None:
        look_up(COLORMAPS, colormap, "colour map")
        if not 0.0 <= opacity <= 1.0:
            raise ConfigError(f"opacity must be between 0 and 1, got {opacity}")
        if top_percent is not None and not 0 < top_percent <= 100:
            raise ConfigError(f"top-percent must be in (0, 100], got {top_percent}")
        self.colormap = colormap
        self.opacity = opacity
        self.top_percent = top_percent
        self.outline_rgb = outline_rgb

    def __call__(self, display: np.ndarray, saliency: np.ndarray) -> np.ndarray:
        base = to_rgb8(display).astype(np.float32) / 255.0
        if saliency.shape != base.shape[:2]:
            raise DataError(f"saliency {saliency.shape} and image {base.shape[:2]} are not on the same grid")
        blended = (1.0 - self.opacity) * base + self.opacity * colorize(saliency, self.colormap)
        out = np.round(np.clip(blended, 0, 1) * 255).astype(np.uint8)
        if self.top_percent is not None:
            thickness = max(1, round(min(saliency.shape) / 256))
            edge = outline(top_region(saliency, self.top_percent), thickness)
            out[edge] = self.outline_rgb
        return out


def png_bytes(rgb_or_grey: np.ndarray) -> bytes:
    """Encode a uint8 H×W or H×W×3 array (or a 0..1 float array) as PNG."""
    from PIL import Image as PILImage

    arr = np.asarray(rgb_or_grey)
    if arr.dtype != np.uint8:
        arr = np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def overlay_figure_png(
    overlay_rgb: np.ndarray, *, colormap: str = "jet", top_percent: float | None = 10.0, dpi: int = 100
) -> bytes:
    """The overlay with a colour bar beside it (PNG bytes), for reports and the per-image PNG."""
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    h, w = overlay_rgb.shape[:2]
    height_in = 6.0
    width_in = height_in * w / h + 1.4
    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    ax = fig.add_axes((0.02, 0.02, 0.96 * (width_in - 1.4) / width_in, 0.96))
    ax.imshow(overlay_rgb, interpolation="nearest")
    ax.set_axis_off()
    cax = fig.add_axes((1 - 1.1 / width_in, 0.1, 0.2 / width_in, 0.8))
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable

    sm = ScalarMappable(norm=Normalize(0, 1), cmap=colormaps[COLORMAPS[colormap]])
    bar = fig.colorbar(sm, cax=cax)
    bar.set_label("relative saliency (per image)")
    if top_percent is not None:
        fig.text(0.02, 0.005, f"outline: top {top_percent:g}% of the map", fontsize=8, va="bottom")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
