"""Re-estimate BatchNorm running statistics for a given set of weights (as SWA's ``update_bn`` does).

Why: in training mode a BatchNorm normalises with the batch's own statistics and only nudges its running
mean/var (momentum 0.1) toward them; in eval mode it uses those running values. After a few dozen steps
from random init the running values still hold much of their initial 0/1 and lag weights that moved a
lot, so eval-mode logits are far off (measured: ±100 in eval mode against ±2 in training mode on the same
images after 11 steps) and the validation loss and probabilities explode. :func:`recompute_bn_stats`
replaces them with the plain average over training batches seen by the weights being evaluated.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medclass.model import autocast_context, forward_train

log = logging.getLogger(__name__)


@torch.no_grad()
def recompute_bn_stats(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device,
    max_batches: int,
    precision: str = "bf16",
    channels_last: bool = True,
) -> int:
    """Replace the running mean/var of ``model``'s trainable BatchNorms by their average over batches.

    Only BatchNorms that ``model.train()`` puts in training mode are re-estimated (frozen ones of the
    linear/partial modes keep their statistics). Up to ``max_batches`` of ``batches`` (N×3×S×S, already
    preprocessed as at evaluation: no augmentation) are forwarded in training mode without gradients,
    with a cumulative average (``momentum=None``). A BatchNorm that no batch reaches (the aux head when it
    is off) keeps its old values. The training flag and each layer's momentum are restored. Returns the
    number of batches used (0: nothing changed).
    """
    was_training = model.training
    model.train(True)  # a medclass model's train() keeps frozen BatchNorms in eval mode
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    layers = [m for m in layers if m.track_running_stats and m.running_mean is not None]
    if not layers or max_batches <= 0:
        model.train(was_training)
        return 0
    saved = {m: (m.momentum, {k: v.clone() for k, v in m.state_dict().items()}) for m in layers}
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts the same
    used = 0
    cuda = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):  # dropout draws must not shift the training's RNG
            for x, _ in batches:
                if used >= max_batches:
                    break
                if x.shape[0] < 2:  # one sample has no batch statistics
                    continue
                x = x.to(device, non_blocking=device.type == "cuda")
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast_context(device, precision):
                    forward_train(model, x)  # N×C (+ aux): only the statistics are kept
                used += 1
    finally:
        for m, (momentum, state) in saved.items():
            m.momentum = momentum
            tracked = m.num_batches_tracked
            assert tracked is not None  # track_running_stats layers only
            if used == 0 or int(tracked) == 0:  # never reached: keep what it had
                m.load_state_dict(state)
            else:  # keep counting the steps the layer has seen, as plain training would
                tracked.copy_(state["num_batches_tracked"])
        model.train(was_training)
    log.debug("BatchNorm statistics re-estimated over %d batch(es) in %d layer(s)", used, len(layers))
    return used


def bn_loader(dataset: Dataset, *, batch_size: int, max_batches: int, seed: int) -> DataLoader:
    """A fixed, seeded sample of ``dataset`` (the cached, un-augmented training images) in batches of
    ``batch_size``: at most ``max_batches`` full batches, the same ones every epoch and on every rank."""
    n = len(dataset)  # type: ignore[arg-type]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    count = min(n, max_batches * batch_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=order[:count], num_workers=0)


def saturated(scores: torch.Tensor) -> int:
    """How many images (rows of per-class log-odds ``scores``, N×C) have a probability of exactly 0 or 1
    in float32 (|log-odds| beyond ~17): the mark of logits that have run away."""
    p = torch.sigmoid(scores.float())
    return int(((p == 0) | (p == 1)).any(dim=1).sum()) if p.ndim == 2 else int(((p == 0) | (p == 1)).sum())
