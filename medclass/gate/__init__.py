"""The input gate: is an image like the ones the model was trained on? (``in_scope`` + a reason).

A checkpoint carries a profile of its training data (sidecar key ``gate_profile``), written at the end of
``medclass train`` or by ``medclass profile``; ``score``, ``explain`` and ``evaluate`` judge every image
against it (``--gate flag|refuse|off``). Three checks, any of which puts an image out of scope:

- headers (:class:`MetaProfile`): modality, photometric interpretation, body part and view position not
  seen in training (when training recorded them), size or pixel spacing far outside the training range;
- layout (:class:`LayoutProfile`): the preprocessed image on a 16×16 grid correlates with the average
  training image less than 99.5% of training/validation images did (``looks inverted`` when its negative
  would pass), or it is nearly uniform;
- features (:class:`FeatureModel`): Mahalanobis distance of the pooled penultimate features (class
  means, shared PPCA covariance) above the 99th percentile of the validation images.

Modules: :mod:`~medclass.gate.profile` (headers, layout), :mod:`~medclass.gate.features` (Mahalanobis),
:mod:`~medclass.gate.gate` (profile ↔ sidecar, :class:`Gate`), :mod:`~medclass.gate.fit` (fitting).
Importing this package imports neither torch nor the model.
"""

from __future__ import annotations

from medclass.gate.features import FeatureModel
from medclass.gate.fit import facts_of_rows, fit_profile
from medclass.gate.gate import NOT_GATED, PROFILE_KEY, Gate, GateProfile, GateResult
from medclass.gate.profile import ImageFacts, LayoutProfile, MetaProfile, layout_of

__all__ = [
    "NOT_GATED",
    "PROFILE_KEY",
    "FeatureModel",
    "Gate",
    "GateProfile",
    "GateResult",
    "ImageFacts",
    "LayoutProfile",
    "MetaProfile",
    "facts_of_rows",
    "fit_profile",
    "layout_of",
]
