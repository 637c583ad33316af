"""Transfer-learning modes: which parameters of an Inception V3 train, at what learning rate, and
BatchNorm layers that stay frozen.

:data:`TRANSFER_MODES` / :func:`apply_mode` freeze what a mode says and return the optimizer's parameter
groups; frozen BatchNorms stay in eval mode (:func:`set_train_mode`, :func:`frozen_batchnorms`).
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

from medclass.errors import ConfigError, look_up

log = logging.getLogger("medclass.model")

HEAD_PREFIXES = ("fc.", "AuxLogits.fc.")


ParamGroup = dict[str, Any]


def _is_head(name: str) -> bool:
    return name.startswith(HEAD_PREFIXES)


def _blocks(model: nn.Module) -> list[str]:
    """The backbone's top-level blocks that hold parameters, input to output."""
    names = getattr(model, "layer_names", None) or [n for n, _ in model.named_children()]
    heads = ("AuxLogits", "fc", "global_pool", "head_drop")
    return [n for n in names if n not in heads and any(True for _ in getattr(model, n).parameters())]


def _groups(model: nn.Module, trainable: Callable[[str], bool], backbone_lr_scale: float) -> list[ParamGroup]:
    heads: list[nn.Parameter] = []
    backbone: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        p.requires_grad_(trainable(name))
        if p.requires_grad:
            (heads if _is_head(name) else backbone).append(p)
    groups = [dict(name="heads", params=heads, lr_scale=1.0)]
    if backbone:
        groups.append(dict(name="backbone", params=backbone, lr_scale=backbone_lr_scale))
    return groups


def _linear(model: nn.Module, partial_blocks: int, backbone_lr_scale: float) -> list[ParamGroup]:
    return _groups(model, _is_head, backbone_lr_scale)


def _partial(model: nn.Module, partial_blocks: int, backbone_lr_scale: float) -> list[ParamGroup]:
    blocks = _blocks(model)
    if not 1 <= partial_blocks <= len(blocks):
        raise ConfigError(f"partial_blocks must be between 1 and {len(blocks)}, got {partial_blocks}")
    prefixes = (*(b + "." for b in blocks[-partial_blocks:]), "AuxLogits.", "fc.")
    return _groups(model, lambda n: n.startswith(prefixes), backbone_lr_scale)


def _full(model: nn.Module, partial_blocks: int, backbone_lr_scale: float) -> list[ParamGroup]:
    return _groups(model, lambda n: True, backbone_lr_scale)


TRANSFER_MODES: dict[str, Callable[[nn.Module, int, float], list[ParamGroup]]] = {
    "linear": _linear,  # only fc and AuxLogits.fc train
    "partial": _partial,  # the last N blocks (default Mixed_7a/b/c), the aux head and fc train
    "full": _full,  # everything trains; the backbone at backbone_lr_scale × the heads' LR
}


def apply_mode(
    model: nn.Module, mode: str, *, partial_blocks: int = 3, backbone_lr_scale: float = 0.1
) -> list[ParamGroup]:
    """Freeze ``model`` as transfer-learning ``mode`` says and keep its frozen BatchNorms in eval mode.

    Sets ``requires_grad`` on every parameter, installs a ``train()`` that keeps BatchNorms whose
    parameters are all frozen in eval mode (their running statistics never move), and puts the model in
    training mode. Returns parameter groups for the optimizer: ``dict(name, params, lr_scale)`` — the
    heads at ``lr_scale`` 1.0 and, when any backbone layer trains, the backbone at ``backbone_lr_scale``
    (multiply the base LR by it). Raises :class:`ConfigError` for an unknown mode or a bad block count.
    """
    fn = look_up(TRANSFER_MODES, mode, "transfer mode")
    groups = fn(model, partial_blocks, backbone_lr_scale)
    model.train = types.MethodType(set_train_mode, model)  # type: ignore[method-assign]
    model.train(True)
    log.info(
        "transfer mode %s: %d trainable / %d parameters",
        mode,
        sum(p.numel() for g in groups for p in g["params"]),
        sum(p.numel() for p in model.parameters()),
    )
    return groups


def frozen_batchnorms(model: nn.Module) -> Iterator[nn.Module]:
    """The BatchNorm layers of ``model`` whose affine parameters are all frozen."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                yield m


def set_train_mode(model: nn.Module, mode: bool = True) -> nn.Module:
    """``model.train(mode)``, except that frozen BatchNorms stay in eval mode. Returns ``model``."""
    nn.Module.train(model, mode)
    if mode:
        for bn in frozen_batchnorms(model):
            bn.eval()
    return model
