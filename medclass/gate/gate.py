"""The gate itself: a checkpoint's training-data profile turned into ``in_scope`` + a reason per image.

:class:`GateProfile` is what a checkpoint's sidecar holds under :data:`PROFILE_KEY` (written at the end of
``medclass train`` or by ``medclass profile``): a :class:`~medclass.gate.profile.MetaProfile`, a
:class:`~medclass.gate.profile.LayoutProfile` and a :class:`~medclass.gate.features.FeatureModel`.
:class:`Gate` judges a batch: header facts, preprocessed arrays and (when the backend gives them) the
pooled features of the same forward pass, and returns a :class:`GateResult` per image. An image is out of
scope when any check gives a reason; the reasons are joined with ``; ``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medclass.errors import CheckpointError, look_up
from medclass.gate.features import FeatureModel
from medclass.gate.profile import ImageFacts, LayoutProfile, MetaProfile
from medclass.names import GATE_MODES

log = logging.getLogger(__name__)

__all__ = ["PROFILE_KEY", "PROFILE_VERSION", "Gate", "GateProfile", "GateResult"]

#: the sidecar key holding the profile
PROFILE_KEY = "gate_profile"
PROFILE_VERSION = 1


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict on one image: ``in_scope`` (None: not gated), ``reason`` ('' when in scope) and
    ``ood_score`` (feature distance / its validation threshold; None without a feature check)."""

    in_scope: bool | None
    reason: str = ""
    ood_score: float | None = None

    def columns(self) -> dict[str, Any]:
        """The row values of :data:`medclass.names.GATE_COLUMNS`."""
        return {
            "in_scope": self.in_scope,
            "gate_reason": self.reason,
            "ood_score": None if self.ood_score is None else round(float(self.ood_score), 4),
        }


NOT_GATED = GateResult(None)


@dataclass
class GateProfile:
    """What the training images looked like: headers, layout and features (each part may be absent)."""

    meta: MetaProfile | None = None
    layout: LayoutProfile | None = None
    features: FeatureModel | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PROFILE_VERSION,
            "meta": None if self.meta is None else self.meta.to_dict(),
            "layout": None if self.layout is None else self.layout.to_dict(),
            "features": None if self.features is None else self.features.to_dict(),
        }

    @classmethod
    def from_dict(cls, doc: Any) -> GateProfile:
        """Raises :class:`CheckpointError` for a malformed profile or one of an unknown version."""
        if not isinstance(doc, Mapping) or doc.get("version") != PROFILE_VERSION:
            version = doc.get("version") if isinstance(doc, Mapping) else None
            raise CheckpointError(
                f"the checkpoint's gate profile has version {version!r}, this medclass reads "
                f"{PROFILE_VERSION}; upgrade medclass or run medclass profile again"
            )
        return cls(
            meta=None if doc.get("meta") is None else MetaProfile.from_dict(doc["meta"]),
            layout=None if doc.get("layout") is None else LayoutProfile.from_dict(doc["layout"]),
            features=None if doc.get("features") is None else FeatureModel.from_dict(doc["features"]),
        )


class Gate:
    """Judges images against ``profile`` (None: nothing to judge against) in ``mode`` (``flag``,
    ``refuse``, ``off``; see :data:`medclass.names.GATE_MODES`). Raises :class:`ConfigError` for an
    unknown mode."""

    def __init__(self, profile: GateProfile | None, mode: str = "flag") -> None:
        look_up(GATE_MODES, mode, "gate mode")
        self.profile = profile
        self.mode = mode
        self._said_no_features = False

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], mode: str = "flag") -> Gate:
        """The gate of a checkpoint's ``meta``; a checkpoint without a profile gets a one-line notice and
        a gate that lets everything through. Raises :class:`CheckpointError` for a malformed profile."""
        look_up(GATE_MODES, mode, "gate mode")
        if mode == "off":
            return cls(None, "off")
        doc = meta.get(PROFILE_KEY)
        if doc is None:
            log.warning(
                "this checkpoint has no input profile (trained before the gate existed): images are not "
                "gated; add one with: medclass profile --checkpoint CKPT --manifest TRAIN.csv"
            )
            return cls(None, mode)
        return cls(GateProfile.from_dict(doc), mode)

    @property
    def active(self) -> bool:
        """Whether images are judged at all."""
        return self.mode != "off" and self.profile is not None

    @property
    def wants_features(self) -> bool:
        return self.active and self.profile is not None and self.profile.features is not None

    def refuses(self, result: GateResult) -> bool:
        """Whether ``result`` means: give no probabilities (``--gate refuse`` and out of scope)."""
        return self.mode == "refuse" and result.in_scope is False

    def judge(
        self,
        facts: Sequence[ImageFacts | None],
        arrays: np.ndarray | Sequence[np.ndarray],
        features: np.ndarray | None = None,
    ) -> list[GateResult]:
        """One :class:`GateResult` per image: ``facts`` (None: header unknown), preprocessed ``arrays``
        (N×3×S×S) and pooled ``features`` (N×D, or None when the backend has none)."""
        n = len(facts)
        if not self.active or self.profile is None:
            return [NOT_GATED] * n
        p = self.profile
        scores: np.ndarray | None = None
        if p.features is not None and features is not None and p.features.threshold_:
            scores = p.features.score(features) / p.features.threshold_
        elif p.features is not None and not self._said_no_features:
            self._said_no_features = True
            log.warning("this backend gives no features: the gate checks headers and layout only")
        out = []
        for i in range(n):
            reasons: list[str] = []
            if p.meta is not None and facts[i] is not None:
                reasons += p.meta.reasons(facts[i])  # type: ignore[arg-type]
            if p.layout is not None:
                reasons += p.layout.reasons(arrays[i])
            score = None if scores is None else float(scores[i])
            if score is not None and score > 1.0:
                reasons.append(
                    f"feature distance {score:.1f}× the validation {p.features.percentile:g}th percentile"  # type: ignore[union-attr]
                )
            out.append(GateResult(not reasons, "; ".join(reasons), score))
        return out
