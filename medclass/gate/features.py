"""The feature-space half of the gate: how far an image's penultimate features lie from the training images.

:class:`FeatureModel` is the Mahalanobis detector of Lee et al. (NeurIPS 2018): one Gaussian per class with
a covariance shared by all classes, fitted on the pooled (pre-``fc``) features of the training images; an
image's score is its distance to the nearest class mean. Inception V3's features have 2048 dimensions and
a training set may have a few hundred images, so the covariance is that of probabilistic PCA (Tipping &
Bishop 1999): the top ``components`` principal directions of the class-centred training features get a
Ledoit-Wolf shrunk covariance, the remaining directions one shared variance ``residual_var_``. The
squared distance is the sum of both parts, so an image that differs from the training images *outside*
the principal directions (the usual case for a CT slice shown to a chest X-ray model) still scores high.

:meth:`FeatureModel.calibrate` sets ``threshold_`` to a percentile (99th by default) of held-out
(validation) images' scores: about 1% of in-distribution images are flagged by construction. Stored in a
checkpoint's sidecar as JSON (:meth:`to_dict`): the projection in float16, the rest in float32, base64.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from medclass.errors import CheckpointError, DataError

__all__ = ["METHOD", "FeatureModel", "decode_array", "encode_array"]

METHOD = "mahalanobis-ppca"


def encode_array(a: np.ndarray, dtype: str = "float32") -> dict[str, Any]:
    """``a`` as JSON: ``{dtype, shape, b64}`` (little-endian)."""
    data = np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<"))
    return {"dtype": dtype, "shape": list(a.shape), "b64": base64.b64encode(data.tobytes()).decode("ascii")}


def decode_array(doc: Any, what: str) -> np.ndarray:
    """The float32 array stored by :func:`encode_array`. Raises :class:`CheckpointError` when malformed."""
    try:
        dtype = np.dtype(str(doc["dtype"])).newbyteorder("<")
        if dtype.kind != "f":
            raise ValueError(f"dtype {doc['dtype']!r} is not a float type")
        shape = tuple(int(n) for n in doc["shape"])
        raw = base64.b64decode(str(doc["b64"]), validate=True)
        return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(np.float32)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"the gate profile's {what} is malformed ({exc}); run medclass profile again"
        ) from exc


class FeatureModel:
    """Class-conditional Gaussians with a shared (PPCA, shrunk) covariance on penultimate features.

    ``components``: principal directions kept (fewer when there are fewer training images);
    ``percentile``: of the validation scores that becomes ``threshold_``. After :meth:`fit`:
    ``means_`` (C×D class means), ``components_`` (K×D, orthonormal rows of the class-centred training
    features), ``precision_`` (K×K, Ledoit-Wolf) and ``residual_var_`` (the variance per dimension left
    outside the K directions); after :meth:`calibrate`: ``threshold_``.
    """

    def __init__(self, components: int = 64, percentile: float = 99.0) -> None:
        self.components = components
        self.percentile = percentile
        self.threshold_: float | None = None
        self.calibration_n_ = 0

    def fit(self, features: np.ndarray, labels: np.ndarray) -> FeatureModel:
        """Fit on training ``features`` (N×D) with class indices ``labels`` (N ints; any grouping, e.g. -1
        for images without a single class). Returns self. Raises :class:`DataError` with fewer than 4 images.
        """
        from sklearn.covariance import LedoitWolf

        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels).astype(int)
        if x.ndim != 2 or len(x) < 4:
            raise DataError(f"the gate's feature model needs at least 4 training images, got {len(x)}")
        groups = sorted(set(y.tolist()))
        self.means_ = np.stack([x[y == g].mean(axis=0) for g in groups])  # C×D
        centred = x - self.means_[np.searchsorted(groups, y)]  # N×D, class-centred
        k = int(max(1, min(self.components, len(x) - len(groups) - 1, x.shape[1] - 1)))
        vt = np.linalg.svd(centred, full_matrices=False)[2]
        # stored in float16: fit the rest with the directions the score will use
        self.components_ = vt[:k].astype(np.float16).astype(np.float64)  # K×D
        z = centred @ self.components_.T  # N×K
        self.precision_ = LedoitWolf().fit(z).precision_  # K×K
        dof = max(1, len(x) - len(groups))
        left = float((centred**2).sum() - (z**2).sum()) / dof
        self.residual_var_ = max(left / max(1, x.shape[1] - k), 1e-12)
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        """The distance (N, ≥ 0) of each row of ``features`` (N×D) to the nearest class: the square root of
        the Mahalanobis distance within the K directions plus the squared residual outside them over
        ``residual_var_``. Raises :class:`DataError` for features of another dimension."""
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if x.shape[1] != self.means_.shape[1]:
            raise DataError(
                f"features have {x.shape[1]} dimensions, the gate was fitted on {self.means_.shape[1]}"
            )
        best = np.full(len(x), np.inf)
        for mean in self.means_:
            d = x - mean  # N×D
            z = d @ self.components_.T  # N×K
            resid = np.maximum((d**2).sum(axis=1) - (z**2).sum(axis=1), 0.0)
            maha = np.einsum("nk,kl,nl->n", z, self.precision_, z)
            best = np.minimum(best, maha + resid / self.residual_var_)
        return np.sqrt(np.maximum(best, 0.0))

    def calibrate(self, features: np.ndarray) -> FeatureModel:
        """Set ``threshold_`` to the ``percentile`` of the scores of held-out in-distribution ``features``.
        Returns self. Raises :class:`DataError` without any."""
        scores = self.score(features) if len(features) else np.zeros(0)
        if len(scores) == 0:
            raise DataError("the gate's threshold needs validation images; none were given")
        self.threshold_ = float(np.percentile(scores, self.percentile))
        self.calibration_n_ = len(scores)
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON for the sidecar. Raises :class:`DataError` before :meth:`calibrate`."""
        if self.threshold_ is None:
            raise DataError("the gate's feature model is not calibrated (call calibrate first)")
        return {
            "method": METHOD,
            "percentile": self.percentile,
            "threshold": self.threshold_,
            "calibration_n": int(self.calibration_n_),
            "residual_var": self.residual_var_,
            "means": encode_array(self.means_),
            "components": encode_array(self.components_, "float16"),
            "precision": encode_array(self.precision_),
        }

    @classmethod
    def from_dict(cls, doc: Any) -> FeatureModel:
        """The model stored by :meth:`to_dict`. Raises :class:`CheckpointError` when malformed."""
        if not isinstance(doc, dict) or doc.get("method") != METHOD:
            raise CheckpointError("the gate profile's feature model is not one this medclass reads")
        try:
            model = cls(percentile=float(doc["percentile"]))
            model.threshold_ = float(doc["threshold"])
            model.calibration_n_ = int(doc.get("calibration_n", 0))
            model.residual_var_ = float(doc["residual_var"])
            model.means_ = decode_array(doc["means"], "means").astype(np.float64)
            model.components_ = decode_array(doc["components"], "components").astype(np.float64)
            model.precision_ = decode_array(doc["precision"], "precision").astype(np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"the gate profile's feature model is malformed ({exc})") from exc
        k, d = model.components_.shape
        if model.means_.ndim != 2 or model.means_.shape[1] != d or model.precision_.shape != (k, k):
            raise CheckpointError("the gate profile's feature model has inconsistent shapes")
        if not (model.residual_var_ > 0 and np.isfinite(model.threshold_)):
            raise CheckpointError("the gate profile's feature model has an invalid threshold or variance")
        model.components = k
        return model
