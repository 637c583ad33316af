"""The explain stage: saliency maps of a trained Inception V3, mapped onto the original image.

- :mod:`~medclass.explain.cam`: :class:`Explainer` (pytorch-grad-cam, batched, gradients only down to the
  target layer, model left untouched), the :data:`CAM_METHODS` and :data:`TARGET_LAYERS` tables.
- :mod:`~medclass.explain.overlay`: map → original grid (``Geometry.to_original``), colour overlay with the
  top-k% region outlined, colour-bar figure.
- :mod:`~medclass.explain.faithfulness`: per-image perturbation score (ROAD / cam-mult) and the
  model-randomisation sanity check.
- :mod:`~medclass.explain.dicom_out`: the overlay as a DICOM Secondary Capture in a new series of the
  source study, and an optional Comprehensive SR of the scores.
"""

from __future__ import annotations

from medclass.explain.cam import (
    CAM_METHODS,
    MIN_GRID,
    TARGET_LAYERS,
    Explainer,
    Saliency,
    default_layer,
    layer_grid,
    layer_grids,
)
from medclass.explain.faithfulness import FAITHFULNESS_METRICS, faithfulness, randomisation_check
from medclass.explain.overlay import COLORMAPS, Overlay, overlay_figure_png, to_original, top_region

__all__ = [
    "CAM_METHODS",
    "COLORMAPS",
    "FAITHFULNESS_METRICS",
    "MIN_GRID",
    "TARGET_LAYERS",
    "Explainer",
    "Overlay",
    "Saliency",
    "default_layer",
    "faithfulness",
    "layer_grid",
    "layer_grids",
    "overlay_figure_png",
    "randomisation_check",
    "to_original",
    "top_region",
]
