"""Saliency maps for Inception V3 with the grad-cam package, batched and fast, leaving the model untouched.

:class:`Explainer` looks up a CAM method (:data:`CAM_METHODS`, pytorch-grad-cam classes) and a target layer
(:data:`TARGET_LAYERS`) by name and explains batches of preprocessed inputs through the one predictor of
medclass (:class:`medclass.model.predictor.TorchPredictor`): its module (the model behind
:class:`medclass.model.MainLogits`, so the aux head's tuple output never reaches grad-cam), its input
preparation and its logits → probabilities step. Grad-CAM needs gradients, so grad-cam runs that module's
forward itself; the probabilities come from that same forward pass.

Speed: plain grad-cam back-propagates into every weight of the network (~3× a forward pass). Only the
gradient of the class score with respect to the target layer's activation is needed, so for the gradient
methods the Explainer freezes every parameter and, with a forward hook on the target layer, replaces the
layer's output by a detached copy that requires grad: autograd then runs only from the logits back to
that layer and computes no weight gradients. The maps are those of plain grad-cam (relative L2 < 1e-5;
pinned by ``tests/test_explain.py`` and measured by ``benchmarks/bench_explain.py``).

Everything the Explainer changes on the model is put back: every module's training flag, every
parameter's ``requires_grad`` and ``.grad``, and every hook it or grad-cam registered.
"""

from __future__ import annotations

import contextlib
import logging
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pytorch_grad_cam import (
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    RandomCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from medclass.calibrate import Calibration
from medclass.errors import ConfigError, DataError, look_up
from medclass.model import MainLogits
from medclass.model.predictor import TorchPredictor

log = logging.getLogger(__name__)

# name -> grad-cam class. FullGrad (needs every bias gradient), AblationCAM (swaps the target layer for
# an ablation layer) and ShapleyCAM (second-order gradients) are left out: they do not fit the gradient
# gate below or would modify the model.
CAM_METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "gradcam-elementwise": GradCAMElementWise,
    "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM,
    "scorecam": ScoreCAM,  # one forward pass per channel of the layer: minutes per image on a CPU
    "random": RandomCAM,  # a baseline for sanity checks, not an explanation
}

_INCEPTION_BLOCKS = (
    "Conv2d_4a_3x3",
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "Mixed_6a",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
    "Mixed_6e",
    "Mixed_7a",
    "Mixed_7b",
    "Mixed_7c",
)
# name -> function returning that layer of a (bare) Inception V3.
TARGET_LAYERS: dict[str, Callable[[nn.Module], nn.Module]] = {
    name: operator.attrgetter(name) for name in reversed(_INCEPTION_BLOCKS)
}
# Downsampling factor of each block's output grid relative to the input (≈; 299 → 8×8 for Mixed_7*).
LAYER_STRIDE: dict[str, int] = {
    "Conv2d_4a_3x3": 4,
    **{n: 8 for n in _INCEPTION_BLOCKS if n.startswith("Mixed_5")},
}
LAYER_STRIDE.update({n: 16 for n in _INCEPTION_BLOCKS if n.startswith("Mixed_6") and n != "Mixed_6a"})
LAYER_STRIDE.update({"Mixed_6a": 16, "Mixed_7a": 32, "Mixed_7b": 32, "Mixed_7c": 32})


def bare_model(model: nn.Module) -> nn.Module:
    """The Inception V3 inside ``model`` (``model`` itself, or the one a wrapper such as MainLogits holds)."""
    for module in model.modules():
        if hasattr(module, "Mixed_7c") and hasattr(module, "fc"):
            return module
    raise ConfigError(f"{type(model).__name__} is not an Inception V3 (no Mixed_7c/fc found)")


def layer_grid(model: nn.Module, layer: str, image_size: int) -> tuple[int, int]:
    """The (rows, cols) of ``layer``'s output for a square ``image_size`` input (a dry run on zeros)."""
    target = look_up(TARGET_LAYERS, layer, "target layer")(bare_model(model))
    shape: list[tuple[int, int]] = []
    handle = target.register_forward_hook(lambda m, i, o: shape.append(tuple(o.shape[-2:])))
    with _restored(model), torch.no_grad():
        model.eval()
        try:
            MainLogits(model)(torch.zeros(1, 3, image_size, image_size))
        finally:
            handle.remove()
    return shape[0]


MIN_GRID = 7  # the default layer gives a saliency map of at least this many cells per side


def layer_grids(model: nn.Module, image_size: int) -> dict[str, tuple[int, int]]:
    """The (rows, cols) of every :data:`TARGET_LAYERS` output for a square ``image_size`` input (one dry
    run on zeros, hooks removed and the model's flags restored afterwards)."""
    bare = bare_model(model)
    shapes: dict[str, tuple[int, int]] = {}
    handles = [
        get(bare).register_forward_hook(
            lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[-2:]))
        )
        for name, get in TARGET_LAYERS.items()
    ]
    with _restored(model), torch.no_grad():
        model.eval()
        try:
            MainLogits(model)(torch.zeros(1, 3, image_size, image_size))
        finally:
            for h in handles:
                h.remove()
    return shapes


def default_layer(model: nn.Module, image_size: int, min_grid: int = MIN_GRID) -> str:
    """The deepest target layer whose map is at least ``min_grid`` × ``min_grid`` at ``image_size``
    (``Mixed_7c`` at 299 px, ``Mixed_6e`` at 224, ``Mixed_5d`` at 128); the finest one when none is."""
    grids = layer_grids(model, image_size)
    for name in TARGET_LAYERS:  # deepest first
        if min(grids[name]) >= min_grid:
            return name
    return max(grids, key=lambda n: min(grids[n]))


@dataclass(frozen=True)
class Saliency:
    """Maps and scores for a batch.

    ``maps``: N×S×S float32 in 0..1 (each map min-max scaled, as grad-cam returns it), at the model input;
    ``targets``: the class index each map explains; ``probabilities``: N×C (softmax or sigmoid per task).
    """

    maps: np.ndarray
    targets: tuple[int, ...]
    probabilities: np.ndarray


@contextlib.contextmanager
def _restored(model: nn.Module) -> Iterator[None]:
    """Put back every module's training flag and every parameter's requires_grad and .grad on exit."""
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad, grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad


def _gate(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: restart the autograd graph at the target layer (nothing below it is differentiated)."""
    return output.detach().requires_grad_(True)


class Explainer:
    """Computes saliency maps of an Inception V3 classifier with a pytorch-grad-cam method.

    ``method`` is a key of :data:`CAM_METHODS`, ``layer`` a key of :data:`TARGET_LAYERS`; unknown names
    raise :class:`ConfigError` listing the valid ones. ``batch_size`` images go through grad-cam at once.
    ``fast`` (default) differentiates only from the logits down to the target layer; ``fast=False`` runs
    grad-cam exactly as shipped (for comparison). ``task`` ("multiclass"/"multilabel") sets how logits
    become probabilities. ``model`` is a model (run where its parameters are, layout untouched) or a
    :class:`~medclass.model.predictor.TorchPredictor` (its device, layout and calibration; its task wins);
    ``calibration`` (a model given: the checkpoint's, :func:`medclass.calibrate.from_meta`) makes the
    reported probabilities calibrated; the maps follow the logits either way. The model
    (aux head on or off, any training mode) is never modified.
    """

    def __init__(
        self,
        model: nn.Module | TorchPredictor,
        *,
        method: str = "gradcam",
        layer: str = "Mixed_7c",
        batch_size: int = 8,
        task: str = "multiclass",
        fast: bool = True,
        calibration: Calibration | None = None,
    ) -> None:
        self.cam_class = look_up(CAM_METHODS, method, "saliency method")
        self.layer_fn = look_up(TARGET_LAYERS, layer, "target layer")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be ≥ 1, got {batch_size}")
        if isinstance(model, TorchPredictor):
            self.predictor = model
        else:
            device = next(iter(model.parameters()), torch.empty(0)).device
            self.predictor = TorchPredictor(
                model, task, device=str(device), channels_last=False, calibration=calibration
            )
        self.model = self.predictor.module.model
        self.method = method
        self.layer = layer
        self.batch_size = batch_size
        self.task = self.predictor.task
        self.fast = fast
        self.target_layer = self.layer_fn(bare_model(self.model))

    def explain(self, inputs: torch.Tensor | np.ndarray, targets: Sequence[int] | None = None) -> Saliency:
        """Maps for ``inputs`` (N×3×S×S, preprocessed) explaining ``targets`` (class index per image;
        default the highest-scoring class of each image).

        Returns a :class:`Saliency`. Raises :class:`DataError` for a malformed batch or target list and
        :class:`ConfigError` for a class index out of range.
        """
        x = torch.as_tensor(inputs, dtype=torch.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise DataError(f"expected an N×3×S×S batch, got shape {tuple(x.shape)}")
        if targets is not None and len(targets) != x.shape[0]:
            raise DataError(f"{len(targets)} targets for {x.shape[0]} images")
        maps, used, probs = [], [], []
        with _restored(self.model):
            for start in range(0, x.shape[0], self.batch_size):
                chunk = x[start : start + self.batch_size]
                tgt = None if targets is None else list(targets[start : start + self.batch_size])
                m, t, p = self._explain_chunk(chunk, tgt)
                maps.append(m)
                used.extend(t)
                probs.append(p)
        return Saliency(np.concatenate(maps), tuple(used), np.concatenate(probs))

    __call__ = explain

    def _explain_chunk(
        self, x: torch.Tensor, targets: list[int] | None
    ) -> tuple[np.ndarray, list[int], np.ndarray]:
        wrapped = self.predictor.module  # MainLogits(model)
        wrapped.eval()
        x = self.predictor.prepare(x)
        handles = []
        if self.fast:
            for p in self.model.parameters():
                p.requires_grad_(False)
            handles.append(self.target_layer.register_forward_hook(_gate, prepend=True))
        cam = self.cam_class(model=wrapped, target_layers=[self.target_layer])
        try:
            cam_targets = None
            if targets is not None:
                n_classes = self._n_classes()
                bad = [t for t in targets if not 0 <= int(t) < n_classes]
                if bad:
                    raise ConfigError(f"target class {bad[0]} out of range 0..{n_classes - 1}")
                cam_targets = [ClassifierOutputTarget(int(t)) for t in targets]
            maps = cam(input_tensor=x, targets=cam_targets)  # N×S×S
            logits = cam.outputs.detach().float()  # N×C, from the same forward pass
            used = [int(t) for t in targets] if targets is not None else logits.argmax(1).tolist()
            probs = self.predictor.probabilities(logits)
        finally:
            cam.activations_and_grads.release()
            for h in handles:
                h.remove()
        return np.asarray(maps, dtype=np.float32), used, probs

    def _n_classes(self) -> int:
        fc = bare_model(self.model).fc
        weight = fc.weight if isinstance(fc, nn.Module) else None
        if isinstance(fc, nn.Linear):
            return int(fc.out_features)
        assert isinstance(weight, torch.Tensor), "Inception V3 ends in a layer with weights"
        return int(weight.shape[0])


def choose_layer(ckpt: Any, layer: str | None) -> str:
    """The saliency layer: ``layer`` when given (warned about when its map is coarser than
    :data:`~medclass.explain.MIN_GRID`, naming the layer to use), else the deepest layer whose map is at
    least that fine at the checkpoint's input size (logged)."""
    from medclass.preprocess import Preprocessor

    size = Preprocessor.from_meta(ckpt.meta).spec.size
    grids = layer_grids(ckpt.model, size)
    best = default_layer(ckpt.model, size)
    if layer is None:
        h, w = grids[best]
        log.info("saliency layer %s: a %d×%d map at %d px input (--layer to change)", best, h, w, size)
        return best
    h, w = grids[layer]
    if min(h, w) < MIN_GRID and layer != best:
        bh, bw = grids[best]
        log.warning(
            "--layer %s gives only a %d×%d saliency map at %d px input; --layer %s gives %d×%d",
            layer, h, w, size, best, bh, bw,
        )  # fmt: skip
    return layer
