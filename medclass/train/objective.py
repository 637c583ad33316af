"""What training minimises, and how class imbalance is handled.

- :class:`InceptionLoss`: ``loss = L(main) + aux_weight × L(aux)`` with ``L`` = cross-entropy with label
  smoothing (multiclass) or ``BCEWithLogits`` (multilabel), optionally class-weighted.
- Imbalance policies by name (:data:`IMBALANCE`): ``none``; ``weighted`` (inverse-frequency class weights
  in the loss; ``pos_weight`` = negatives/positives per finding for multilabel); ``balanced`` (every
  class drawn equally often by a seeded, per-epoch weighted sampler, see :class:`EpochSampler`).
- :func:`auc` / :func:`macro_auc`: the validation AUC (one-vs-rest macro for multiclass, macro over
  findings for multilabel); a class with one label value only is left out with a warning; NaN if none.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Sampler

from medclass.errors import ConfigError

log = logging.getLogger(__name__)

IMBALANCE = ("none", "weighted", "balanced")


def class_counts(targets: torch.Tensor, num_classes: int, task: str) -> torch.Tensor:
    """Positives per class: ``(C,)`` float64."""
    if task == "multilabel":
        return targets.double().sum(0)
    return torch.bincount(targets.long(), minlength=num_classes).double()


def loss_weights(targets: torch.Tensor, num_classes: int, task: str) -> torch.Tensor:
    """Inverse-frequency weights (multiclass, mean 1 over the classes present) or ``pos_weight``
    (multilabel: negatives / positives, 1 where a finding has no positives). ``(C,)`` float32."""
    counts = class_counts(targets, num_classes, task)
    n = float(len(targets))
    if task == "multilabel":
        w = torch.where(counts > 0, (n - counts) / counts.clamp(min=1), torch.ones_like(counts))
        return w.float()
    present = counts > 0
    w = torch.zeros_like(counts)
    w[present] = n / (present.sum() * counts[present])
    return w.float()


def sample_weights(targets: torch.Tensor, num_classes: int, task: str) -> torch.Tensor:
    """Per-sample draw weights that make every class equally likely: ``(N,)`` float64.

    Multilabel: a sample weighs as its rarest positive finding (rows with none as the 'no finding' group).
    """
    counts = class_counts(targets, num_classes, task)
    if task == "multilabel":
        t = targets.bool()
        none = ~t.any(1)
        inv = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
        w = (t.double() * inv).max(1).values
        n_none = int(none.sum())
        if n_none:
            w[none] = 1.0 / n_none
        return w
    return 1.0 / counts[targets.long()]


class InceptionLoss(torch.nn.Module):
    """``main + aux_weight × aux`` loss; returns ``(total, main, aux)`` (aux is 0 without an aux output).

    ``task``: ``multiclass`` (targets: class indices) or ``multilabel`` (targets: float 0/1 ``N×C``).
    ``weight``: multiclass class weights or multilabel ``pos_weight`` (``C``,), or None.
    Label smoothing applies to the multiclass cross-entropy only.
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        task: str,
        *,
        aux_weight: float = 0.4,
        label_smoothing: float = 0.0,
        weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if task not in ("multiclass", "multilabel"):
            raise ConfigError(f"task must be multiclass or multilabel; got {task!r}")
        self.task = task
        self.aux_weight = aux_weight
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)

    def single(self, logits: torch.Tensor, target: torch.Tensor, *, smoothing: bool = True) -> torch.Tensor:
        logits = logits.float()
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, target.float(), pos_weight=self.weight)
        return F.cross_entropy(
            logits, target, weight=self.weight, label_smoothing=self.label_smoothing if smoothing else 0.0
        )

    def forward(
        self, main: torch.Tensor, aux: torch.Tensor | None, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        main_loss = self.single(main, target)
        if aux is None or self.aux_weight == 0:
            return main_loss, main_loss, torch.zeros_like(main_loss)
        aux_loss = self.single(aux, target)
        return main_loss + self.aux_weight * aux_loss, main_loss, aux_loss

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Unweighted, unsmoothed loss of each sample (validation): ``(N,)``."""
        logits = logits.float()
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none").mean(1)
        return F.cross_entropy(logits, target, reduction="none")


class EpochSampler(Sampler[int]):
    """Seeded, per-epoch sample order, optionally weighted, optionally sharded over ranks.

    Epoch ``e`` draws from a generator seeded with ``(seed, e)``: the same order on every rank and after a
    resume. With ``weights`` it draws ``len(weights)`` indices with replacement (balanced classes);
    without, a permutation (``shuffle``) or the identity. Rank ``r`` of ``world`` takes every
    ``world``-th index from ``r`` (the list is padded to a multiple of ``world`` by repeating its start).
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        weights: torch.Tensor | None = None,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.n = n
        self.seed = seed
        self.weights = weights
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n / self.world_size)

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, stream=1))
        if self.weights is not None:
            order = torch.multinomial(self.weights.double(), self.n, replacement=True, generator=gen)
        elif self.shuffle:
            order = torch.randperm(self.n, generator=gen)
        else:
            order = torch.arange(self.n)
        idx = order.tolist()
        total = len(self) * self.world_size
        idx += idx[: total - len(idx)]
        return iter(idx[self.rank : total : self.world_size])


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A 63-bit seed for ``(seed, epoch, stream)``: stream 0 torch's global RNG (dropout), 1 the sampler,
    2 the augmentation."""
    x = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(stream)]).generate_state(2, np.uint32)
    return int(x[0]) << 31 ^ int(x[1])


def auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Binary ROC AUC; NaN when ``y_true`` holds a single class."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true).astype(int)
    if y.min(initial=0) == y.max(initial=0) or len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, np.asarray(y_score, dtype=float)))


def macro_auc(targets: np.ndarray, scores: np.ndarray, task: str, classes: list[str] | None = None) -> float:
    """Validation AUC: macro one-vs-rest (multiclass: ``targets`` (N,), ``scores`` (N, C) probabilities or
    per-class log-odds — any per-class monotone transform gives the same AUC;
    binary uses the positive class) or macro over findings (multilabel: ``targets``/``scores`` (N, C)).

    Classes with one label value only are skipped with a warning; NaN (with a warning) if none is left.
    """
    targets = np.asarray(targets)
    scores = np.asarray(scores, dtype=float)
    c = scores.shape[1]
    names = classes or [str(i) for i in range(c)]
    if task == "multilabel":
        columns = [(targets[:, k], scores[:, k]) for k in range(c)]
    elif c == 2:
        columns = [(targets == 1, scores[:, 1])]
        names = [names[1]]
    else:
        columns = [(targets == k, scores[:, k]) for k in range(c)]
    values, skipped = [], []
    for name, (y, s) in zip(names, columns, strict=True):
        a = auc(y, s)
        (skipped.append(name) if math.isnan(a) else values.append(a))
    if skipped:
        log.warning(
            "val AUC: class(es) %s have a single label value in the validation set; left out",
            ", ".join(skipped),
        )
    if not values:
        log.warning("val AUC undefined: no class has both positives and negatives in the validation set")
        return float("nan")
    return float(np.mean(values))
