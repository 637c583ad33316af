"""How much to trust a saliency map: a perturbation score per image and a model-randomisation check.

- :func:`faithfulness` scores each map with a pytorch-grad-cam metric (:data:`FAITHFULNESS_METRICS`): how
  the explained class's probability changes when the image is perturbed according to the map. For
  ``road-morf`` (ROAD, Rong et al. 2022: the most relevant pixels removed by noisy linear imputation) a
  large *drop* means the highlighted pixels mattered; for ``cam-mult`` (the image multiplied by the map)
  a *small* change means the highlighted pixels alone keep the prediction.
- :func:`randomisation_check` is the sanity check of Adebayo et al. (2018): re-initialise the top of the
  network (Mixed_7* and fc) and measure the Spearman rank correlation between the maps of the trained and
  the randomised model. A method that explains the model must give clearly different maps (low
  correlation); one that only shows image edges gives the same map either way.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
from pytorch_grad_cam.metrics.road import ROADCombined, ROADLeastRelevantFirst, ROADMostRelevantFirst
from torch import nn

from medclass.errors import look_up
from medclass.explain.cam import Explainer, _restored, bare_model
from medclass.model import MainLogits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaithfulnessMetric:
    """A grad-cam perturbation metric, with what its number means for the report."""

    make: Callable[[], Callable]
    meaning: str


FAITHFULNESS_METRICS: dict[str, FaithfulnessMetric] = {
    "road-morf": FaithfulnessMetric(
        lambda: ROADMostRelevantFirst(percentile=80),
        "change in the probability of the explained class when the 20% most salient pixels are replaced "
        "by noisy linear imputation (ROAD, most relevant first); more negative = the highlighted region "
        "mattered more",
    ),
    "road-lerf": FaithfulnessMetric(
        lambda: ROADLeastRelevantFirst(percentile=20),
        "change in the probability of the explained class when the 80% least salient pixels are imputed "
        "(ROAD, least relevant first); near zero = the highlighted region alone keeps the prediction",
    ),
    "road-combined": FaithfulnessMetric(
        lambda: ROADCombined(percentiles=[20, 40, 60, 80]),
        "ROAD combined score over 20–80% removal: (LeRF − MoRF)/2; higher = more faithful",
    ),
    "cam-mult": FaithfulnessMetric(
        CamMultImageConfidenceChange,
        "change in the probability of the explained class when the image is multiplied by the map; near "
        "zero or positive = the highlighted region alone keeps the prediction",
    ),
}


class _Probability:
    """grad-cam target: the explained class's probability (softmax or sigmoid), not its raw logit."""

    def __init__(self, category: int, task: str) -> None:
        self.category = category
        self.task = task

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if self.task == "multilabel":
            return torch.sigmoid(output[..., self.category])
        return torch.softmax(output, dim=-1)[..., self.category]


def faithfulness(
    model: nn.Module,
    inputs: torch.Tensor | np.ndarray,
    maps: np.ndarray,
    targets: Sequence[int],
    *,
    metric: str = "road-morf",
    task: str = "multiclass",
) -> np.ndarray:
    """Per-image score (float32, length N) of ``maps`` (N×S×S, 0..1) for ``inputs`` (N×3×S×S) and the
    explained ``targets`` under ``metric`` (a :data:`FAITHFULNESS_METRICS` key; its ``meaning`` says how
    to read the number). The model's flags are restored. Raises :class:`ConfigError` for an unknown metric.
    """
    spec = look_up(FAITHFULNESS_METRICS, metric, "faithfulness metric")
    x = torch.as_tensor(inputs, dtype=torch.float32)
    wrapped = MainLogits(model)
    with _restored(model), torch.no_grad():
        model.eval()
        scores = spec.make()(
            x, np.asarray(maps, dtype=np.float32), [_Probability(int(t), task) for t in targets], wrapped
        )
    return np.asarray(scores, dtype=np.float32).reshape(-1)


TOP_BLOCKS = ("Mixed_7a", "Mixed_7b", "Mixed_7c", "fc")


def randomised_copy(model: nn.Module, blocks: Sequence[str] = TOP_BLOCKS, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` whose ``blocks`` are re-initialised (``reset_parameters`` of every layer,
    BatchNorm running statistics reset). ``model`` and the global RNG are left untouched."""
    clone = copy.deepcopy(model)
    net = bare_model(clone)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in blocks:
            for module in getattr(net, name).modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
                if hasattr(module, "reset_running_stats"):
                    module.reset_running_stats()
    return clone


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (flattened); NaN when either is constant."""
    from scipy.stats import spearmanr

    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def randomisation_check(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    *,
    method: str = "gradcam",
    layer: str = "Mixed_7c",
    targets: Sequence[int] | None = None,
    seed: int = 0,
) -> float:
    """Mean Spearman rank correlation between the maps of ``model`` and of a copy whose Mixed_7* and fc are
    re-initialised (Adebayo et al. 2018), on ``images`` (N×3×S×S, preprocessed), explaining ``targets``
    (default the trained model's predicted classes for both). Low values (say < 0.5) mean the maps depend
    on what the model learned; values near 1 mean they would look the same for an untrained network.
    ``model`` is not modified. Constant maps are left out; NaN when every map is constant.
    """
    trained = Explainer(model, method=method, layer=layer).explain(images, targets)
    random_model = randomised_copy(model, seed=seed)
    randomised = Explainer(random_model, method=method, layer=layer).explain(images, list(trained.targets))
    rhos = [spearman(a, b) for a, b in zip(trained.maps, randomised.maps, strict=True)]
    rhos = [r for r in rhos if not np.isnan(r)]
    value = float(np.mean(rhos)) if rhos else float("nan")
    log.info(
        "randomisation check (%s at %s): mean Spearman %.3f over %d maps", method, layer, value, len(rhos)
    )
    return value
