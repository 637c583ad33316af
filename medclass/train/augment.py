"""Mild, radiology-appropriate augmentation on batches of cached, normalised tensors.

Each transform is a small callable (settings in ``__init__``, data in ``__call__``) that takes a batch
``N×3×S×S`` and a :class:`torch.Generator`, so that the random draws are reproducible per epoch and do
not depend on worker processes: the training loop seeds one generator with ``(seed, epoch)``. They run
on the batch's own device (the GPU when training there), one fused ``grid_sample`` for the geometry.

No horizontal flip by default: on chest X-rays the heart is on the left, and laterality is information.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen) * (hi - lo) + lo


class RandomAffine:
    """Random rotation (± ``degrees``), isotropic scale in ``scale``, translation (± ``translate`` of the
    side) and, with probability ``hflip``, a horizontal flip. Areas moved in from outside are filled with
    ``fill`` (per channel: the normalised value of black, so padding looks like the letterbox)."""

    def __init__(
        self,
        degrees: float = 7.0,
        scale: tuple[float, float] = (0.9, 1.1),
        translate: float = 0.05,
        hflip: float = 0.0,
        fill: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> None:
        self.degrees = degrees
        self.scale = scale
        self.translate = translate
        self.hflip = hflip
        self.fill = tuple(float(v) for v in fill)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n = x.shape[0]  # x: N×C×S×S
        angle = _uniform(n, -self.degrees, self.degrees, gen) * (math.pi / 180)
        scale = _uniform(n, self.scale[0], self.scale[1], gen)
        tx = _uniform(n, -self.translate, self.translate, gen) * 2  # grid units: the side is 2 long
        ty = _uniform(n, -self.translate, self.translate, gen) * 2
        flip = torch.where(torch.rand(n, generator=gen) < self.hflip, -1.0, 1.0)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        # theta maps output coordinates to input coordinates (inverse transform).
        theta = torch.stack(
            [torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1
        ).to(device=x.device, dtype=torch.float32)  # N×2×3
        grid = _affine_grid(theta, x.shape[-2], x.shape[-1])
        fill = torch.tensor(self.fill, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        # Sample (x - fill) with zero padding, then add fill back: outside pixels become `fill`.
        out = F.grid_sample(
            x - fill, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return out.add_(fill)


def _affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``F.affine_grid(theta, (N, C, h, w), align_corners=False)`` as one batched matmul against a
    cached H·W×3 base grid (affine_grid builds the base per call: a third of the augmentation's time)."""
    base = _base_grid(h, w, theta.device)
    return torch.matmul(base, theta.transpose(1, 2)).view(theta.shape[0], h, w, 2)


_BASE_GRIDS: dict[tuple[int, int, str], torch.Tensor] = {}


def _base_grid(h: int, w: int, device: torch.device) -> torch.Tensor:
    key = (h, w, str(device))
    if key not in _BASE_GRIDS:
        ys = (torch.arange(h, dtype=torch.float32) * 2 + 1) / h - 1  # pixel centres, align_corners=False
        xs = (torch.arange(w, dtype=torch.float32) * 2 + 1) / w - 1
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        _BASE_GRIDS[key] = torch.stack([gx, gy, torch.ones_like(gx)], -1).view(h * w, 3).to(device)
    return _BASE_GRIDS[key]


class RandomIntensity:
    """Brightness (± ``brightness`` of the 0..1 range) and contrast (× 1 ± ``contrast`` around each image's
    mean) jitter, applied in intensity space: un-normalise with ``mean``/``std``, jitter, clamp to 0..1,
    normalise again. The same jitter goes to the three channels (grey images stay grey)."""

    def __init__(
        self,
        brightness: float,
        contrast: float,
        mean: Sequence[float],  # the model's normalisation (InputSpec.mean/std): no default to drift from
        std: Sequence[float],
    ) -> None:
        self.brightness = brightness
        self.contrast = contrast
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        b = _uniform(n, -self.brightness, self.brightness, gen).to(x.device, x.dtype).view(n, 1, 1, 1)
        c = _uniform(n, 1 - self.contrast, 1 + self.contrast, gen).to(x.device, x.dtype).view(n, 1, 1, 1)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        # p = x·std + mean (intensities); p' = (p - centre)·c + centre + b = x·(std·c) + (mean·c + k),
        # k = centre·(1 - c) + b, with centre = mean of p, known from x's channel means: one pass writes p'.
        centre = (x.mean(dim=(2, 3), keepdim=True) * std + mean).mean(dim=1, keepdim=True)
        p = torch.addcmul(mean * c + centre * (1 - c) + b, x, std * c)
        return p.clamp_(0.0, 1.0).sub_(mean).div_(std)


class Compose:
    """Apply ``transforms`` in order with the same generator."""

    def __init__(self, transforms: Sequence[object]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        for t in self.transforms:
            x = t(x, gen)  # type: ignore[operator]
        return x


def build_augment(
    *,
    mean: Sequence[float],
    std: Sequence[float],
    rotate: float = 7.0,
    scale: tuple[float, float] = (0.9, 1.1),
    translate: float = 0.05,
    hflip: bool = False,
    brightness: float = 0.1,
    contrast: float = 0.1,
) -> Compose:
    """The default training augmentation: affine (no flip unless ``hflip``) then intensity jitter."""
    fill = [-m / s for m, s in zip(mean, std, strict=True)]  # normalised black
    return Compose(
        [
            RandomAffine(rotate, scale, translate, 0.5 if hflip else 0.0, fill),
            RandomIntensity(brightness, contrast, mean, std),
        ]
    )
