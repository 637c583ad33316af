"""The composed preprocessing: Image → windowed display → fitted square → 3×S×S normalised array."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from medclass.errors import InvalidPixelDataError
from medclass.ingest.types import Image, Window
from medclass.preprocess.geometry import FitPolicy, FitTransform, Geometry
from medclass.preprocess.spec import InputSpec
from medclass.preprocess.window import Invert, VoiTransform, WindowPolicy, WindowTransform, window_policy

log = logging.getLogger(__name__)

# RGB images are shown as stored: 0..255 → 0..1 (LINEAR_EXACT with C=127.5, W=255 is exactly x/255).
RGB_WINDOW = Window(127.5, 255.0, "range", "LINEAR_EXACT", "RGB 0..255")


@dataclass(frozen=True)
class Prepared:
    """One model input: ``array`` 3×S×S float32 C-contiguous, normalised with the spec's mean/std;
    ``geometry`` maps it back to the original pixels; ``window`` is the window that was applied."""

    array: np.ndarray  # 3×S×S
    geometry: Geometry
    window: Window


class Windowing:
    """Image → H×W (or H×W×3) float32 display values in 0..1: window, MONOCHROME1 inversion, padding black.

    Colour images are scaled 0..255 → 0..1 and never windowed. ``__call__`` returns ``(display, Window)``.
    Raises :class:`~medclass.errors.ConfigError` from the policy (e.g. ``header`` on a file without one)
    and :class:`InvalidPixelDataError` for pixels that are not H×W or H×W×3.
    """

    def __init__(self, window: str | WindowPolicy = "auto") -> None:
        self.policy = window_policy(window)
        self.invert = Invert()

    def transform_for(self, image: Image) -> VoiTransform:
        """The VOI transform this policy chooses for ``image`` (the RGB scaling for colour images)."""
        _check(image)
        return WindowTransform(RGB_WINDOW) if image.is_color else self.policy(image)

    def __call__(self, image: Image) -> tuple[np.ndarray, Window]:
        transform = self.transform_for(image)
        display = transform(image.pixels)
        if not image.is_color and image.meta.photometric.upper() == "MONOCHROME1":
            display = self.invert(display)
        if image.mask is not None:
            display[~image.mask] = 0.0  # padding is black whatever the window or photometric says
        bad = ~np.isfinite(display)
        if bad.any():
            display[bad] = 0.0
        return display, transform.window


def _check(image: Image) -> None:
    shape = image.pixels.shape
    if not (len(shape) == 2 or (len(shape) == 3 and shape[2] == 3)) or min(shape[:2], default=0) < 1:
        raise InvalidPixelDataError(
            f"expected H×W or H×W×3 pixels, got shape {'×'.join(map(str, shape))}", image.meta.source or None
        )
    if image.mask is not None and image.mask.shape != shape[:2]:
        raise InvalidPixelDataError(
            f"mask shape {image.mask.shape} does not match pixels {shape[:2]}", image.meta.source or None
        )


class ToChannels:
    """S×S or S×S×3 display (0..1) → 3×S×S float32, C-contiguous (grey replicated to 3 channels)."""

    def __call__(self, fitted: np.ndarray) -> np.ndarray:
        if fitted.ndim == 2:
            return np.ascontiguousarray(np.broadcast_to(fitted, (3, *fitted.shape)), dtype=np.float32)
        return np.ascontiguousarray(fitted.transpose(2, 0, 1), dtype=np.float32)


class Normalize:
    """3×S×S in 0..1 → ``(x - mean[c]) / std[c]`` per channel (float32, in place on a fresh array)."""

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.inv_std = (1.0 / np.asarray(std, dtype=np.float32)).reshape(3, 1, 1)

    def __call__(self, channels: np.ndarray) -> np.ndarray:
        channels -= self.mean
        channels *= self.inv_std
        return channels

    def inverse(self, array: np.ndarray) -> np.ndarray:
        """The normalised 3×S×S array back to display values in 0..1 (what the model sees, for previews)."""
        return array / self.inv_std + self.mean


class Preprocessor:
    """Image → :class:`Prepared` model input, composed of small transforms.

    ``Windowing(window)`` → ``FitTransform(spec.size, fit, spec.interpolation)`` → ``ToChannels`` →
    ``Normalize(spec.mean, spec.std)``. Only the fit policy's geometry reaches the model: the original
    size, spacing and header values do not (but see :mod:`medclass.preprocess.geometry` on letterbox bars
    revealing aspect ratio). Raises what its transforms raise (``ConfigError``, ``InvalidPixelDataError``).
    """

    def __init__(
        self, spec: InputSpec, window: str | WindowPolicy = "auto", fit: str | FitPolicy = "letterbox"
    ) -> None:
        self.spec = spec
        self.window = window
        self.fit = fit
        self.windowing = Windowing(window)
        self.fitter = FitTransform(spec.size, fit, spec.interpolation)
        self.to_channels = ToChannels()
        self.normalize = Normalize(spec.mean, spec.std)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Preprocessor:
        """The preprocessor a checkpoint was trained with: its sidecar's ``input``, ``window`` and ``fit``."""
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["input"].items()}
        return cls(InputSpec(**fields), window=meta.get("window", "auto"), fit=meta.get("fit", "letterbox"))

    def __call__(self, image: Image) -> Prepared:
        display, window = self.windowing(image)  # H×W(×3), 0..1
        fitted, geometry = self.fitter(display)  # S×S(×3), 0..1
        array = self.normalize(self.to_channels(fitted))  # 3×S×S
        return Prepared(array, geometry, window)

    def model_view(self, prepared: Prepared) -> np.ndarray:
        """What the model sees, de-normalised to 0..1: S×S for grey inputs, S×S×3 for colour."""
        view = np.clip(self.normalize.inverse(prepared.array), 0.0, 1.0)
        if np.allclose(view[0], view[1]) and np.allclose(view[0], view[2]):
            return view[0]
        return view.transpose(1, 2, 0)

    def __repr__(self) -> str:
        return f"Preprocessor(size={self.spec.size}, window={self.window!r}, fit={self.fit!r})"


def display_image(image: Image, window: str | WindowPolicy = "auto") -> np.ndarray:
    """The image as a viewer would show it: H×W (or H×W×3) float32 in 0..1, windowed, MONOCHROME1
    inverted, padding black, not resized. Raises what :class:`Windowing` raises."""
    return Windowing(window)(image)[0]
