"""Weight averaging: an exponential moving average (EMA) of the weights, kept beside the trained model.

The EMA (timm's :class:`~timm.utils.ModelEmaV3`, with its decay warm-up so that short runs are not
dominated by the random init) is updated after every optimiser step. Only the parameters are averaged;
the BatchNorm buffers are copied from the model and then re-estimated for the averaged weights
(:mod:`medclass.train.bnstats`) before the EMA is validated or saved, since the running statistics of
the raw weights do not belong to the averaged ones.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class WeightAverage:
    """An EMA of ``model``'s parameters with decay ``decay`` (warmed up: ``1 - (1 + step)^-2/3``, capped).

    ``module`` is the averaged model (eval mode); :meth:`update` after each optimiser step;
    :meth:`state` / :meth:`load` carry it through ``--resume``.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        from timm.utils import ModelEmaV3

        self.decay = decay
        self.steps = 0
        # The copy keeps each parameter's requires_grad: the frozen/trainable split of the transfer mode
        # decides which BatchNorms get re-estimated (updates run without gradients anyway).
        self._ema = ModelEmaV3(model, decay=decay, use_warmup=True, exclude_buffers=True)

    @property
    def module(self) -> nn.Module:
        return self._ema.module

    def update(self, model: nn.Module) -> None:
        self.steps += 1
        self._ema.update(model, step=self.steps)

    def state(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "weights": {k: v.detach().clone() for k, v in self.module.state_dict().items()},
        }

    def load(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`. Raises ``KeyError``/``RuntimeError`` when it does not fit the model."""
        self.steps = int(state["steps"])
        weights = {k: torch.as_tensor(v) for k, v in state["weights"].items()}
        self.module.load_state_dict(weights, strict=True)
