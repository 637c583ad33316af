"""The model stage: timm's Inception V3 with its auxiliary head, made to work at any size ≥ 75 px.

What lives here:

- :func:`create_model` builds timm ``inception_v3`` and optionally loads weights: a local timm/torchvision
  state dict, an earlier medclass checkpoint for task-to-task transfer, or a ``timm:``/``hf-hub:`` name
  taken from the Hugging Face cache (:mod:`medclass.weights.hub`).
- :class:`MainLogits` wraps a model so that it returns only the main logits (evaluation, scoring, export,
  Grad-CAM); :func:`forward_train` returns ``(main, aux | None)`` for training.
- :data:`TASK_ACTIVATIONS` / :func:`probabilities` turn logits into scores; inference for evaluate, score
  and explain goes through :mod:`medclass.model.predictor` (one :class:`~medclass.model.predictor.Predictor`).
- :data:`TRANSFER_MODES` / :func:`apply_mode` freeze what a transfer-learning mode says and return the
  optimizer's parameter groups; frozen BatchNorms stay in eval mode (:func:`set_train_mode`).
- :func:`to_device` and :func:`autocast_context` for channels_last and bf16/fp16 autocast.

The transfer modes live in :mod:`medclass.model.transfer` and are re-exported here.

Sharp edges pinned by ``tests/test_model.py``: timm returns ``(main, aux)`` in eval mode too; the stock aux
head crashes below ~299 px; 1000-class weights fail on ``AuxLogits.fc`` for another class count.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.models.inception_v3 import InceptionAux, InceptionV3
from torch import nn

from medclass.errors import CheckpointError, ConfigError, look_up
from medclass.model.transfer import (
    HEAD_PREFIXES,
    TRANSFER_MODES,
    ParamGroup,
    apply_mode,
    frozen_batchnorms,
    set_train_mode,
)
from medclass.names import ARCHITECTURE
from medclass.preprocess.spec import input_spec
from medclass.weights import hub, read_state_dict

log = logging.getLogger(__name__)

__all__ = [
    "ARCHITECTURE",
    "HEAD_PREFIXES",
    "MIN_IMAGE_SIZE",
    "PRECISIONS",
    "TASK_ACTIVATIONS",
    "TRANSFER_MODES",
    "AdaptiveInceptionAux",
    "MainLogits",
    "ParamGroup",
    "apply_mode",
    "autocast_context",
    "create_model",
    "forward_train",
    "frozen_batchnorms",
    "model_from_state_dict",
    "probabilities",
    "read_state_dict",
    "set_train_mode",
    "to_device",
    "unwrap",
]

MIN_IMAGE_SIZE = 75  # below this the stem's convolutions and poolings run out of pixels


# --- the aux head at any size ----------------------------------------------------------------------
class AdaptiveInceptionAux(InceptionAux):
    """timm's ``InceptionAux`` that also works on the small maps of inputs below 299 px.

    Same children and parameter names/shapes as timm's (``conv0``, ``conv1``, ``fc``), so state dicts load
    either way. On maps of at least 17×17 (inputs ≥ 299 px) it computes exactly what timm does; on smaller
    maps the 5×5/stride-3 average pool is replaced by adaptive pooling to 5×5 so the 5×5 ``conv1`` fits.
    """

    @classmethod
    def from_aux(cls, aux: InceptionAux) -> AdaptiveInceptionAux:
        """A new module that shares ``aux``'s layers (no copy) and overrides only ``forward``."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.conv0, new.conv1, new.fc = aux.conv0, aux.conv1, aux.fc
        new.train(aux.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] >= 17 and x.shape[-1] >= 17:
            x = F.avg_pool2d(x, kernel_size=5, stride=3)  # N×768×17×17 → N×768×5×5 (timm's path)
        else:
            x = F.adaptive_avg_pool2d(x, (5, 5))  # N×768×h×w → N×768×5×5
        x = self.conv0(x)  # N×128×5×5
        x = self.conv1(x)  # N×768×1×1
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)  # N×768
        return self.fc(x)  # N×num_classes


def _build(num_classes: int, aux_logits: bool, drop_rate: float) -> Any:  # InceptionV3
    model: Any = timm.create_model(
        ARCHITECTURE, pretrained=False, num_classes=num_classes, aux_logits=aux_logits, drop_rate=drop_rate
    )
    if model.AuxLogits is not None:
        model.AuxLogits = AdaptiveInceptionAux.from_aux(model.AuxLogits)
    return model


def _fresh_aux(model: Any, num_classes: int) -> None:
    """Give ``model`` a freshly initialised aux head (timm's init) and turn the aux output on."""
    donor = _build(num_classes, aux_logits=True, drop_rate=0.0)
    model.AuxLogits = donor.AuxLogits
    model.aux_logits = True


def create_model(
    num_classes: int,
    *,
    aux_logits: bool = True,
    image_size: int | None = None,
    weights: Path | str | None = None,
    drop_rate: float = 0.0,
    reset_heads: bool = True,
) -> nn.Module:
    """Build timm's Inception V3 (random init, never downloads) with the aux head adapted to any size ≥ 75.

    ``image_size`` None is the model's own input size (:func:`medclass.preprocess.spec.input_spec`).

    ``weights`` (optional) is a local timm or torchvision Inception V3 state dict (``.pth``/``.bin``/``.pt``
    read with ``torch.load(weights_only=True)``; ``.safetensors``), an earlier medclass checkpoint
    (its stem, ``.json`` or ``.safetensors``), or a name, ``timm:inception_v3.tv_in1k`` /
    ``hf-hub:timm/inception_v3.tv_in1k``, resolved through the Hugging Face cache
    (:mod:`medclass.weights.hub`). The weights are loaded strictly at the source's class count,
    then both heads (``fc`` and ``AuxLogits.fc``) are replaced by fresh ``num_classes``-output layers
    (always when the class counts differ; also when they match unless ``reset_heads=False``). A source
    without an aux head (timm's TF ports) gets a freshly initialised one.

    Returns the model in training mode on the CPU. Raises :class:`ConfigError` for a bad class count or
    image size and :class:`CheckpointError` for weights that are missing, pickled with code, or of another
    architecture (the message names the file and the first mismatching keys).
    """
    if num_classes < 1:
        raise ConfigError(f"num_classes must be ≥ 1, got {num_classes}")
    image_size = input_spec(ARCHITECTURE, image_size).size
    if image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"image size {image_size} is too small for Inception V3 (minimum {MIN_IMAGE_SIZE})")
    model: Any
    if weights is None:
        model = _build(num_classes, aux_logits, drop_rate)
    else:
        path = hub.resolve(str(weights)) if hub.is_name(weights) else Path(weights)
        model = _from_weights(path, num_classes, aux_logits, drop_rate, reset_heads)
    _set_image_size(model, image_size)
    return model.train()


# --- reading weights (medclass.weights reads the files) -----------------------------------------
def _mismatch_message(model: nn.Module, sd: dict[str, torch.Tensor], limit: int = 3) -> str | None:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k} {tuple(sd[k].shape)}≠{tuple(own[k].shape)}"
        for k in own
        if k in sd and sd[k].shape != own[k].shape
    ]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
            parts.append(f"{label}: {', '.join(keys[:limit])}{more}")
    return "; ".join(parts) or None


def model_from_state_dict(
    sd: dict[str, torch.Tensor],
    *,
    image_size: int | None = None,
    drop_rate: float = 0.0,
    source: Path | None = None,
) -> nn.Module:
    """A model shaped like ``sd`` (class count from ``fc.weight``, aux head iff ``AuxLogits.*`` keys) holding it.

    Built on the meta device and filled by assignment (no random init: fast), floating tensors as float32.
    Returns the model in training mode on the CPU. Raises :class:`CheckpointError` naming ``source`` and the
    first missing/unexpected/wrong-shape keys when ``sd`` is not an Inception V3 state dict.
    """
    fc = sd.get("fc.weight")
    num_classes = int(fc.shape[0]) if fc is not None and fc.ndim == 2 else 1000
    with torch.device("meta"):
        model = _build(num_classes, any(k.startswith("AuxLogits.") for k in sd), drop_rate)
    problem = _mismatch_message(model, sd)
    if problem is not None:
        raise CheckpointError(f"not an Inception V3 state dict ({problem})", source)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers())), "tensor left on meta device"
    _set_image_size(model, input_spec(ARCHITECTURE, image_size).size)
    return model.train()


def _set_image_size(model: Any, image_size: int) -> None:
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    cfg["input_size"] = (3, image_size, image_size)
    model.pretrained_cfg = cfg


def _from_weights(
    path: Path, num_classes: int, aux_logits: bool, drop_rate: float, reset_heads: bool
) -> Any:  # InceptionV3
    model: Any = model_from_state_dict(read_state_dict(path), drop_rate=drop_rate, source=path)
    src_classes, src_aux = model.num_classes, model.AuxLogits is not None
    if aux_logits and not src_aux:
        log.info("%s: no aux head in the weights; the aux head starts from random init", path)
        _fresh_aux(model, src_classes)
    elif not aux_logits and src_aux:
        model.AuxLogits = None
        model.aux_logits = False
    if reset_heads or src_classes != num_classes:
        _reset_heads(model, num_classes)
        log.info("%s: loaded backbone; fresh %d-class heads", path, num_classes)
    return model


def _reset_heads(model: Any, num_classes: int) -> None:
    """Fresh ``fc`` and ``AuxLogits.fc`` with ``num_classes`` outputs.

    timm ≥ 1.0.31's ``reset_classifier`` also resets the aux fc, earlier versions (1.0.29) leave it at the
    old class count; replacing it here makes that independent of the timm version.
    """
    model.reset_classifier(num_classes)
    if model.AuxLogits is not None:
        old = model.AuxLogits.fc
        model.AuxLogits.fc = nn.Linear(old.in_features, num_classes, device=old.weight.device)
        model.AuxLogits.fc.train(model.training)


# --- outputs ---------------------------------------------------------------------------------------
class MainLogits(nn.Module):
    """Wraps a model so that ``forward`` returns only the main logits, in any mode, aux head on or off.

    For timm's Inception V3 the aux head is not even computed. ``model`` is shared, not copied.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model: nn.Module = unwrap(model, compiled=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # N×3×S×S → N×C
        m = self.model
        if isinstance(m, InceptionV3):
            return m.forward_head(m.forward_postaux(m.forward_preaux(x)))
        out = m(x)
        return out[0] if isinstance(out, tuple | list) else out

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The main logits (N×C) and, in the same forward pass, the pooled pre-``fc`` features (N×D; None
        for a model that is not timm's Inception V3)."""
        m = self.model
        if isinstance(m, InceptionV3):
            pooled = m.forward_head(m.forward_postaux(m.forward_preaux(x)), pre_logits=True)  # N×2048
            return m.fc(pooled), pooled
        return self(x), None


def unwrap(model: nn.Module, *, compiled: bool = True) -> nn.Module:
    """The model inside :class:`MainLogits`, (Distributed)DataParallel and, if ``compiled``, torch.compile.

    Evaluating through the bare model avoids DDP's collective calls when only one rank evaluates.
    """
    while True:
        if isinstance(model, MainLogits):
            model = model.model
        elif isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif compiled and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


def forward_train(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``model`` and return ``(main_logits, aux_logits)``; ``aux_logits`` is None without an aux head."""
    out = model(x)
    if isinstance(out, tuple | list):
        return out[0], out[1]
    return out, None


# keyed by medclass.names.TASKS (tests/test_layering.py checks)
TASK_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "multiclass": lambda logits: torch.softmax(logits, dim=1),
    "multilabel": torch.sigmoid,
}


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Scores from logits: softmax over classes (``multiclass``) or a sigmoid per class (``multilabel``).

    Returns a float32 N×C tensor. Raises :class:`ConfigError` for an unknown task.
    """
    return look_up(TASK_ACTIVATIONS, task, "task")(logits.float())


# --- device, layout and precision -------------------------------------------------------------------
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def to_device(model: nn.Module, device: str | torch.device, channels_last: bool = True) -> nn.Module:
    """Move ``model`` to ``device`` (in place) and, by default, to channels_last layout. Returns ``model``."""
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def autocast_context(
    device: str | torch.device, dtype: str | torch.dtype | None = "bf16"
) -> contextlib.AbstractContextManager[Any]:
    """An autocast context for ``device`` (``"fp32"``/None: no autocast; ``"bf16"``; ``"fp16"`` on CUDA).

    Raises :class:`ConfigError` for an unknown precision or fp16 on the CPU.
    """
    resolved: torch.dtype | None = (
        look_up(PRECISIONS, dtype, "precision") if isinstance(dtype, str) else dtype
    )
    if resolved is None or resolved == torch.float32:
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    if device_type == "cpu" and resolved == torch.float16:
        raise ConfigError("fp16 autocast needs a CUDA device; use bf16 on the CPU")
    return torch.autocast(device_type=device_type, dtype=resolved)
