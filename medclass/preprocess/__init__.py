"""Preprocess stage: an ingested :class:`~medclass.ingest.types.Image` → the model's input array.

``input_spec()`` reads size/mean/std from timm; ``Preprocessor(spec, window, fit)`` composes windowing
(:mod:`.window`), fitting to the square (:mod:`.geometry`), channel replication and normalisation
(:mod:`.pipeline`); ``display_image()`` gives the windowed original for previews and overlays.
"""

from __future__ import annotations

from medclass.preprocess.geometry import FITS, FitTransform, Geometry, crop, fit_policy, letterbox, stretch
from medclass.preprocess.pipeline import (
    RGB_WINDOW,
    Normalize,
    Prepared,
    Preprocessor,
    ToChannels,
    Windowing,
    display_image,
)
from medclass.preprocess.spec import InputSpec, input_spec
from medclass.preprocess.window import (
    CT_PRESETS,
    WINDOW_FUNCTIONS,
    WINDOW_POLICIES,
    AutoWindow,
    FixedWindow,
    HeaderWindow,
    Invert,
    MinMaxWindow,
    PercentileWindow,
    VoiLutTransform,
    VoiLutWindow,
    WindowTransform,
    linear,
    linear_exact,
    sigmoid,
    window_name,
    window_policy,
)

__all__ = [
    "CT_PRESETS",
    "FITS",
    "RGB_WINDOW",
    "WINDOW_FUNCTIONS",
    "WINDOW_POLICIES",
    "AutoWindow",
    "FitTransform",
    "FixedWindow",
    "Geometry",
    "HeaderWindow",
    "InputSpec",
    "Invert",
    "MinMaxWindow",
    "Normalize",
    "PercentileWindow",
    "Prepared",
    "Preprocessor",
    "ToChannels",
    "VoiLutTransform",
    "VoiLutWindow",
    "WindowTransform",
    "Windowing",
    "crop",
    "display_image",
    "fit_policy",
    "input_spec",
    "letterbox",
    "linear",
    "linear_exact",
    "sigmoid",
    "stretch",
    "window_name",
    "window_policy",
]
