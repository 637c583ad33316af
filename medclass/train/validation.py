"""Validation during and after training: per-epoch validation of the weights being selected, the warning
when the best epoch's probabilities saturate, and the calibration of ``RUN/best`` fitted on its validation
logits once training is over (:mod:`medclass.calibrate`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from medclass.errors import DataError
from medclass.train import distributed as dist_
from medclass.train.bnstats import saturated
from medclass.train.config import TrainConfig
from medclass.train.objective import InceptionLoss, macro_auc
from medclass.train.setup import Prepared
from medclass.train.steps import predict

log = logging.getLogger(__name__)


def warn_saturated(history: list[dict[str, Any]], best_epoch: int) -> None:
    """One warning line when the 'best' checkpoint's validation probabilities saturate (many exactly 0/1)."""
    row = next((r for r in history if r.get("epoch") == best_epoch), None)
    if row is None or not row.get("val_count"):
        return
    n, count = int(row.get("val_saturated") or 0), int(row["val_count"])
    if n and n >= max(2, 0.05 * count):
        log.warning(
            "best (epoch %d): %d of %d validation images get a probability of exactly 0 or 1: the logits "
            "have run away and its probabilities are not trustworthy (train longer, start from --weights, "
            "or keep --bn-batches on)",
            best_epoch,
            n,
            count,
        )


def validate(
    p: Prepared, model: torch.nn.Module, criterion: InceptionLoss, config: TrainConfig, ctx: dist_.DistContext
) -> tuple[float, float, int, int]:
    """Val AUC, mean val loss, the number of distinct validation images and how many of them have a
    saturated probability (exactly 0 or 1), over all ranks."""
    if p.val_loader is None:
        return float("nan"), float("nan"), 0, 0
    scores, targets, losses = val_predictions(p, model, criterion, config, ctx)
    auc = macro_auc(targets.numpy(), scores.numpy(), p.task, p.classes)
    return auc, float(losses.mean()), len(scores), saturated(scores)


def val_predictions(
    p: Prepared, model: torch.nn.Module, criterion: InceptionLoss, config: TrainConfig, ctx: dist_.DistContext
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validation ``(log-odds N×C, targets, losses N)`` of every validation image, gathered over all ranks."""
    assert p.val_loader is not None and p.val_ds is not None
    sampler = p.val_loader.sampler
    indices = torch.tensor(list(iter(sampler)), dtype=torch.int64)
    scores, targets, losses = predict(
        model,
        p.val_loader,
        criterion,
        p.task,
        device=ctx.device,
        precision=config.precision,
        channels_last=config.channels_last,
    )
    scores, targets, losses = dist_.gather_predictions(indices, scores, targets, losses, ctx)
    if len(scores) != len(p.val_ds or ()):
        raise DataError(f"validation gathered {len(scores)} predictions for {len(p.val_ds or ())} images")
    return scores, targets, losses


def calibrate_best(
    p: Prepared, model: torch.nn.Module, criterion: InceptionLoss, config: TrainConfig, ctx: dist_.DistContext
) -> str:
    """Fit the calibration of ``RUN/best`` on its validation logits and store it in ``best.json``
    (:mod:`medclass.calibrate`). Training is over, so ``model`` takes the best weights (BatchNorm statistics
    included) for one more validation pass on every rank; rank 0 fits and writes. Returns the calibration in
    words, "" when there is nothing to fit (``--calibration none``, no validation split, no best); a
    validation split that cannot be calibrated (one class only) is a warning, not a failed run.
    """
    best = config.run_dir / "best"
    if config.calibration == "none" or p.val_loader is None or not (config.run_dir / "best.json").is_file():
        return ""
    from medclass import checkpoint
    from medclass.calibrate import fit_calibration

    state, _ = checkpoint.read_state_dict(best)
    model.load_state_dict(state, strict=True)
    scores, targets, _ = val_predictions(p, model, criterion, config, ctx)
    # per-class log-odds → logits: the multilabel logits themselves; log p for a softmax (same probabilities)
    logits = scores.double() if p.task == "multilabel" else torch.nn.functional.logsigmoid(scores.double())
    positive = p.manifest.positive_class
    index = p.classes.index(positive) if positive in p.classes else 1
    if not ctx.is_main:
        dist_.barrier(ctx)
        return ""
    try:
        cal = fit_calibration(
            logits.numpy(), targets.numpy(), p.task, method=config.calibration, positive=index, split="val"
        )
    except DataError as exc:
        log.warning("best was not calibrated: %s", exc)
        dist_.barrier(ctx)
        return ""
    checkpoint.update_meta(best, {"calibration": cal.to_dict()})
    dist_.barrier(ctx)
    v = cal.record["validation"]
    return (
        f"{cal.describe()}; val NLL {v['raw']['nll']:.4f} → {v['calibrated']['nll']:.4f}, "
        f"ECE {v['raw']['ece']:.4f} → {v['calibrated']['ece']:.4f} (n={cal.record['n']}, in-sample)"
    )
