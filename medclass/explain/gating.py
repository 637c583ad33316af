"""The input gate in ``medclass explain``: a verdict per image before its saliency is computed.

The features come from a no-grad pass of the explainer's one predictor
(:class:`~medclass.model.predictor.TorchPredictor`): Grad-CAM's own pass needs gradients, and under
``--gate refuse`` the verdict decides whether that pass runs at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medclass.explain.naming import image_ids, relative_source
from medclass.gate import NOT_GATED, Gate, GateResult, ImageFacts
from medclass.names import REFUSED
from medclass.phi import pseudonym

__all__ = ["judge", "refused_row"]


def judge(gate: Gate, explainer: Any, metas: Sequence[Any], x: Any) -> list[GateResult]:
    """The gate's verdict on each image (``metas``: their :class:`~medclass.ingest.ImageMeta`; ``x``:
    their preprocessed arrays, N×3×S×S)."""
    if not gate.active:
        return [NOT_GATED] * len(metas)
    predictor = getattr(explainer, "predictor", None)
    feats = predictor.predict(x)[1] if gate.wants_features and predictor is not None else None
    return gate.judge([ImageFacts.from_meta(m) for m in metas], x, feats)


def refused_row(meta: Any, verdict: GateResult, taken: set[str], inputs: list[Path]) -> dict[str, Any]:
    """The ``refused`` entry of explanations.json for an image the gate refused: identifiers (as the
    explained rows name them) and the gate's columns, decision ``refused``."""
    image_id, study_id = image_ids(meta, taken)
    return {
        "image_id": image_id,
        "source": relative_source(meta.source, inputs),
        "frame": meta.index,
        "study_id": study_id,
        "patient": pseudonym(meta.patient_id) or "",
        "decision": REFUSED,
        **verdict.columns(),
    }
