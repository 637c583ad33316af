"""The inner training and validation loops: one optimiser step per batch, nothing else.

:class:`StepRunner` is the code path both ``medclass train`` and ``benchmarks/bench_train.py`` time:
move the batch (channels_last), augment it on its device, forward under autocast, ``main + w × aux``
loss, backward, clip, step, schedule. Losses are accumulated on the device and read back once per epoch
(plus every ``sync_every`` steps for the progress bar), so a GPU is never stalled after each step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medclass.model import autocast_context, forward_train
from medclass.model.predictor import TorchPredictor
from medclass.train.objective import InceptionLoss

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class EpochStats:
    """Means over the epoch's samples, and its speed."""

    loss: float
    main_loss: float
    aux_loss: float
    samples: int
    steps: int
    seconds: float

    @property
    def img_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


class StepRunner:
    """Runs training steps of ``model`` (possibly DDP-wrapped) with ``optimizer`` and ``criterion``.

    ``scheduler`` is stepped after every optimiser step; ``grad_clip`` > 0 clips the global grad norm of
    the trainable parameters; ``precision`` is ``bf16`` (autocast) or ``fp32``; ``augment`` (optional)
    is applied to each batch on the device with the generator given to :meth:`run`.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: InceptionLoss,
        *,
        device: torch.device,
        scheduler: Any = None,
        precision: str = "bf16",
        channels_last: bool = True,
        grad_clip: float = 0.0,
        augment: Augment | None = None,
        sync_every: int = 10,
        after_step: Callable[[], None] | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.criterion = criterion
        self.device = device
        self.scheduler = scheduler
        self.precision = precision
        self.channels_last = channels_last
        self.grad_clip = grad_clip
        self.augment = augment
        self.sync_every = sync_every
        self.after_step = after_step  # e.g. the weight average's update
        self._params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]

    def _inputs(
        self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch on the device, augmented (when ``gen`` is given), in the model's memory format (after
        the augmentation: grid_sample returns NCHW whatever it is given)."""
        non_blocking = self.device.type == "cuda"
        x = x.to(self.device, non_blocking=non_blocking)
        if self.augment is not None and gen is not None:
            x = self.augment(x, gen)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=non_blocking)

    def step(
        self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimiser step on batch ``x`` (N×3×S×S), ``y``. Returns detached (total, main, aux) losses."""
        x, y = self._inputs(x, y, gen)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_context(self.device, self.precision):
            main, aux = forward_train(self.model, x)  # N×C, N×C | None
        loss, main_loss, aux_loss = self.criterion(main, aux, y)
        loss.backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self._params, self.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.after_step is not None:
            self.after_step()
        return loss.detach(), main_loss.detach(), aux_loss.detach()

    def run(
        self,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        gen: torch.Generator | None = None,
        on_sync: Callable[[int, float], None] | None = None,
    ) -> EpochStats:
        """Train on every batch of ``batches``; returns the epoch's mean losses and speed.

        ``on_sync(step, running_loss)`` is called every ``sync_every`` steps (progress bars).
        Raises ``FloatingPointError`` when the loss becomes NaN or infinite.
        """
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        samples = steps = 0
        start = time.perf_counter()
        for x, y in batches:
            losses = self.step(x, y, gen)
            n = x.shape[0]
            totals += torch.stack(losses).double() * n
            samples += n
            steps += 1
            if on_sync is not None and steps % self.sync_every == 0:
                running = float(totals[0]) / samples
                _check_finite(running, steps)
                on_sync(steps, running)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        mean = (totals / max(samples, 1)).tolist()
        _check_finite(mean[0], steps)
        return EpochStats(mean[0], mean[1], mean[2], samples, steps, seconds)


def _check_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"training loss became {loss} by step {step}; lower --lr or check the inputs"
        )


def log_odds(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Per-class log-odds ``log(p / (1 - p))`` of ``logits`` in float32: N×C.

    Multilabel: the logits themselves. Multiclass: ``l_k - logsumexp(l_j, j ≠ k)``. A monotone function
    of each class's probability (same ranking, same AUC) that does not saturate to ties where the
    probabilities round to exactly 0 or 1.
    """
    logits = logits.float()
    if task == "multilabel":
        return logits
    c = logits.shape[1]
    others = logits.unsqueeze(1).expand(-1, c, c).clone()  # N×C×C: row k holds all logits
    others[:, torch.arange(c), torch.arange(c)] = float("-inf")  # … except l_k
    return logits - torch.logsumexp(others, dim=2)


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    criterion: InceptionLoss,
    task: str,
    *,
    device: torch.device,
    precision: str = "bf16",
    channels_last: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Main-head scores of every batch in eval mode: ``(scores N×C, targets, per-sample loss N)`` on CPU.

    Scores are per-class log-odds (:func:`log_odds`): the same ranking, hence the same AUC, as the
    probabilities, without the ties that saturated probabilities (exactly 0 or 1) would create.

    The batches go through the one predictor of medclass (:class:`~medclass.model.predictor.TorchPredictor`,
    as evaluate, score and explain do); the model's training flags are restored afterwards and the aux head
    is not computed.
    """
    predictor = TorchPredictor(
        model, task, device=str(device), precision=precision, channels_last=channels_last
    )
    scores, targets, losses = [], [], []
    for x, y in batches:
        logits = predictor.logits(x)  # N×C, eval mode for the call, the training flag restored
        y = y.to(device)
        losses.append(criterion.per_sample(logits, y).cpu())
        scores.append(log_odds(logits, task).cpu())
        targets.append(y.cpu())
    if not scores:
        return torch.empty(0), torch.empty(0), torch.empty(0)
    return torch.cat(scores), torch.cat(targets), torch.cat(losses)
