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
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        fill = torch.tensor(self.fill, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        # Sample (x - fill) with zero padding, then add fill back: outside pixels become `fill`.
        out = F.grid_sample(
            x - fill, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return out + fill


class RandomIntensity:
    """Brightness (± ``brightness`` of the 0..1 range) and contrast (× 1 ± ``contrast`` around each image's
    mean) jitter, applied in intensity space: un-normalise with ``mean``/``std``, jitter, clamp to 0..1,
    normalise again. The same jitter goes to the three channels (grey images stay grey)."""

    def __init__(
        self,
        brightness: float = 0.1,
        contrast: float = 0.1,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
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
        p = x * std + mean  # 0..1 intensities
        centre = p.mean(dim=(1, 2, 3), keepdim=True)
        p = ((p - centre) * c + centre + b).clamp_(0.0, 1.0)
        return (p - mean) / std


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
