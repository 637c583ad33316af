"""Fitting a :class:`~medclass.gate.GateProfile`: the training images through the model once more.

:func:`fit_profile` takes a ``predict`` function (a batch N×3×S×S → probabilities and pooled features, as
:meth:`medclass.model.predictor.Predictor.predict` gives them), the preprocessed training and validation
images as ``(array, target)`` datasets (:class:`~medclass.preprocess.dataset.CachedDataset`), and the
training images' header facts. ``medclass train`` calls it for its ``best`` checkpoint and ``medclass
profile`` for an existing one (:func:`facts_of_rows` reads the headers of manifest rows).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from medclass.errors import DataError, MedclassError
from medclass.gate.features import FeatureModel
from medclass.gate.gate import GateProfile
from medclass.gate.profile import ImageFacts, LayoutProfile, MetaProfile

log = logging.getLogger(__name__)

__all__ = ["MAX_PROFILE_IMAGES", "facts_of_rows", "fit_profile"]

Predict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]

#: training images the feature model is fitted on at most (a seeded sample beyond): bounds the extra pass
MAX_PROFILE_IMAGES = 4000


def facts_of_rows(manifest: Any, rows: Sequence[Any]) -> list[ImageFacts]:
    """The header facts of manifest ``rows`` (headers only, no pixels); unreadable ones are left out."""
    from medclass import ingest

    out = []
    for row in rows:
        try:
            out.append(ImageFacts.from_meta(ingest.read_meta(manifest.resolve(row))))
        except MedclassError as exc:
            log.debug("gate profile: no header facts for %s (%s)", row.path, exc)
    return out


def _arrays(dataset: Any, indices: Sequence[int]) -> Iterator[np.ndarray]:
    for i in indices:
        yield np.asarray(dataset[i][0], dtype=np.float32)  # 3×S×S


def _group(target: Any, multiclass: bool) -> int:
    return int(np.asarray(target)) if multiclass else 0


def _features(predict: Predict, dataset: Any, indices: Sequence[int], batch_size: int) -> np.ndarray | None:
    chunks = []
    for start in range(0, len(indices), batch_size):
        batch = np.stack(list(_arrays(dataset, indices[start : start + batch_size])))  # B×3×S×S
        _, feats = predict(batch)
        if feats is None:
            return None
        chunks.append(np.asarray(feats, dtype=np.float32))
    return np.concatenate(chunks) if chunks else None


def fit_profile(
    predict: Predict | None,
    train: Any,
    val: Any | None,
    facts: Sequence[ImageFacts],
    *,
    task: str = "multiclass",
    batch_size: int = 32,
    max_images: int = MAX_PROFILE_IMAGES,
    components: int = 64,
    percentile: float = 99.0,
    seed: int = 0,
) -> GateProfile:
    """The profile of the ``train`` images (a dataset of ``(3×S×S array, target)``), calibrated on ``val``.

    ``predict`` None (or a backend without features) gives a profile without the feature model. Without
    validation images the feature threshold is set on the training images themselves (too low a bar: more
    in-distribution images get flagged), with a warning. Raises :class:`DataError` when ``train`` is empty.
    """
    n = len(train)
    if n == 0:
        raise DataError("no training images to profile")
    indices = list(range(n))
    if n > max_images:
        indices = sorted(random.Random(seed).sample(indices, max_images))
    val_idx = list(range(len(val))) if val is not None else []
    layout = LayoutProfile().fit(_arrays(train, indices), _arrays(val, val_idx) if val_idx else ())
    model = None
    if predict is not None:
        feats = _features(predict, train, indices, batch_size)
        if feats is not None and len(feats) >= 4:
            groups = np.array([_group(train[i][1], task == "multiclass") for i in indices])
            model = FeatureModel(components, percentile).fit(feats, groups)
            held = _features(predict, val, val_idx, batch_size) if val_idx else None
            if held is None or len(held) == 0:
                log.warning(
                    "no validation images: the gate's feature threshold is set on the training images"
                )
                held = feats
            model.calibrate(held)
            log.info(
                "gate profile: %d training images, %d feature components, threshold %.3g on %d images",
                len(feats), model.components_.shape[0], model.threshold_, len(held),
            )  # fmt: skip
        else:
            log.warning("too few training features for the gate's feature model; headers and layout only")
    return GateProfile(MetaProfile().fit(facts), layout, model)
