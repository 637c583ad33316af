"""The chest-radiograph phantom: anatomy drawn in display space (float32 0..1, bright = dense).

A smooth body silhouette, two lung fields narrowed at the apex and cut by the diaphragm domes and the
heart, mediastinum, spine, posterior and anterior rib arcs, clavicles, hilar vessels, quantum noise, and,
for a positive image, a focal opacity (a soft-edged textured disc, like a consolidation) inside a lung.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from medclass.errors import ConfigError


class Lesion(NamedTuple):
    """A focal opacity: centre ``(cx, cy)`` = (column, row) and radius ``r``, in original pixels."""

    cx: float
    cy: float
    r: float


@dataclass(frozen=True)
class Anatomy:
    """Per-image phantom geometry and contrast, in units of ``min(rows, cols)`` around the image centre."""

    du: float = 0.0  # horizontal shift of the thorax
    dv: float = 0.0  # vertical shift
    scale: float = 1.0  # overall size of the thorax
    lung_w: float = 0.16  # lung half-width (before scale)
    lung_h: float = 0.30  # lung half-height
    dome_r: float = 0.22  # top of the right hemidiaphragm (image left), v below centre
    dome_l: float = 0.25  # top of the left hemidiaphragm (image right)
    heart: float = 1.0  # heart size factor
    soft: float = 0.47  # soft-tissue brightness
    lung: float = 0.16  # lung brightness
    bone: float = 0.09  # rib brightness over the background
    noise: float = 0.012  # quantum noise sigma
    gamma: float = 1.0  # global contrast curve


@dataclass(frozen=True)
class Phantom:
    """One rendered image: ``image`` H×W float32 display space 0..1, ``lungs`` H×W bool, ``lesion``."""

    image: np.ndarray
    lungs: np.ndarray
    lesion: Lesion | None
    anatomy: Anatomy


def random_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw a plausible per-patient variation of size, position and contrast."""
    return Anatomy(
        du=float(rng.normal(0, 0.02)),
        dv=float(rng.normal(0, 0.02)),
        scale=float(rng.uniform(0.9, 1.05)),
        lung_w=float(rng.uniform(0.15, 0.17)),
        lung_h=float(rng.uniform(0.28, 0.32)),
        dome_r=float(rng.uniform(0.17, 0.23)),
        dome_l=float(rng.uniform(0.20, 0.26)),
        heart=float(rng.uniform(0.9, 1.1)),
        soft=float(rng.uniform(0.42, 0.52)),
        lung=float(rng.uniform(0.12, 0.2)),
        bone=float(rng.uniform(0.07, 0.11)),
        noise=float(rng.uniform(0.008, 0.018)),
        gamma=float(rng.uniform(0.85, 1.15)),
    )


def jitter_anatomy(a: Anatomy, rng: np.random.Generator) -> Anatomy:
    """The same patient on another image: slightly different positioning and exposure."""
    d = asdict(a)
    d.update(
        du=a.du + float(rng.normal(0, 0.01)),
        dv=a.dv + float(rng.normal(0, 0.01)),
        scale=a.scale * float(rng.uniform(0.98, 1.02)),
        noise=float(rng.uniform(0.008, 0.018)),
        gamma=a.gamma * float(rng.uniform(0.95, 1.05)),
    )
    return Anatomy(**d)


def _coords(shape: tuple[int, int], a: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Normalised (u, v) = (horizontal, vertical) coordinates of pixel centres, as broadcastable arrays."""
    h, w = shape
    s = min(h, w) * a.scale
    u = ((np.arange(w, dtype=np.float32) - (w - 1) / 2) / s - a.du)[None, :]
    v = ((np.arange(h, dtype=np.float32) - (h - 1) / 2) / s - a.dv)[:, None]
    return u, v


def _sig(x: np.ndarray, eps: float) -> np.ndarray:
    return (0.5 + 0.5 * np.tanh(x / (2 * eps))).astype(np.float32)


def _lung_fields(u: np.ndarray, v: np.ndarray, a: Anatomy) -> np.ndarray:
    """Soft (0..1) lung-field mask: two apex-narrowed ellipses cut by the diaphragm domes and the heart."""
    out = np.zeros(np.broadcast_shapes(u.shape, v.shape), np.float32)
    for side, dome in ((-1, a.dome_r), (1, a.dome_l)):
        cu, cv = side * 0.2, -0.04
        t = np.clip((v - (cv - a.lung_h)) / (2 * a.lung_h), 0, 1)
        half_w = a.lung_w * (0.6 + 0.6 * np.sqrt(t))  # rounded apex, wide base
        f = ((u - cu) / half_w) ** 2 + ((v - cv) / a.lung_h) ** 2
        dome_v = dome + 2.2 * (u - cu) ** 2  # dome highest mid-lung, costophrenic angles deep laterally
        out = np.maximum(out, _sig(1 - f, 0.04) * _sig(dome_v - v, 0.006))
    return out * (1 - _heart(u, v, a))


def _heart(u: np.ndarray, v: np.ndarray, a: Anatomy) -> np.ndarray:
    hu, hv = 0.06, 0.15
    f = ((u - hu) / (0.16 * a.heart)) ** 2 + ((v - hv) / (0.12 * a.heart)) ** 2
    return _sig(1 - f, 0.05)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise, zero mean, about unit std, H×W float32."""
    h, w = shape
    grid = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    rows = np.linspace(1, cells + 1, h, dtype=np.float32)
    cols = np.linspace(1, cells + 1, w, dtype=np.float32)
    out = ndimage.map_coordinates(grid, np.meshgrid(rows, cols, indexing="ij"), order=1, mode="nearest")
    return ndimage.uniform_filter(out, size=max(3, min(h, w) // (2 * cells)))


def place_lesion(lungs: np.ndarray, rng: np.random.Generator, radius: float) -> Lesion:
    """A lesion centre drawn uniformly among lung pixels at least ``0.9 * radius`` from the lung edge.

    Falls back to the deepest lung pixel when no pixel is that deep. Raises ConfigError without lungs.
    """
    if not lungs.any():
        raise ConfigError("phantom has no lung field to place a lesion in")
    step = 4  # the distance map on a coarse grid is plenty to choose a centre, and 16x cheaper
    depth = ndimage.distance_transform_edt(np.pad(lungs[::step, ::step], 1))[1:-1, 1:-1] * step
    ok = np.argwhere(depth >= 0.9 * radius + step)
    if len(ok) == 0:
        ok = np.argwhere(depth == depth.max())
    row, col = (ok[rng.integers(len(ok))] + rng.uniform(-0.5, 0.5, 2)) * step  # off the coarse grid
    row, col = min(max(row, 0.0), lungs.shape[0] - 1.0), min(max(col, 0.0), lungs.shape[1] - 1.0)
    return Lesion(round(float(col), 2), round(float(row), 2), round(float(radius), 2))


def _layers(shape: tuple[int, int], a: Anatomy, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The smooth anatomy (no noise, no lesion) and the soft lung mask, both H×W float32."""
    u, v = _coords(shape, a)
    body_f = (np.abs(u) / 0.46) ** 3 + (np.abs(v - 0.1) / 0.72) ** 4
    neck = _sig(0.09 - np.abs(u), 0.01)  # narrower above the shoulders
    body = _sig(1 - body_f, 0.05) * np.maximum(_sig(v + 0.42 + 0.3 * u**2, 0.012), neck)
    lungs = _lung_fields(u, v, a)
    img = 0.03 + (a.soft - 0.03) * body
    img = img + 0.05 * _heart(u, v, a) + 0.06 * _sig(v - a.dome_r - 0.02, 0.03) * body  # heart, abdomen
    lung_val = a.lung + 0.08 * np.clip(v + 0.1, -0.3, 0.4) + 0.02 * _smooth_noise(rng, shape, 24)
    for side in (-1, 1):  # hila: brighter vessels near the mediastinum
        lung_val = lung_val + 0.1 * np.exp(-(((u - side * 0.1) / 0.05) ** 2 + ((v + 0.01) / 0.08) ** 2))
    img = img + (lung_val - img) * lungs
    spine = _sig(0.035 - np.abs(u), 0.004) * _sig(v + 0.5, 0.01)
    img = img + 0.07 * spine * (0.8 + 0.2 * np.cos(2 * np.pi * v / 0.055))
    # posterior ribs: one periodic pattern along arcs rising from the spine, then falling laterally
    t = np.clip((np.abs(u) - 0.03) / 0.42, 0, 1)
    z = (v + 0.09 * np.sin(0.9 * np.pi * t) - 0.12 * t**2 + 0.42) / 0.07
    ribs = np.maximum(np.cos(2 * np.pi * z), 0) ** 6 * _sig(z + 0.25, 0.1)
    # anterior ribs: fainter, sloping down towards the sternum
    z2 = (v - 0.15 * t + 0.33) / 0.085
    ribs = ribs + 0.4 * np.maximum(np.cos(2 * np.pi * z2), 0) ** 6 * _sig(z2 + 0.25, 0.1)
    cage = _sig(a.dome_r + 0.12 + 0.15 * t - v, 0.02) * _sig(t - 0.02, 0.01) * _sig(0.98 - t, 0.01)
    ribs = ribs * cage * (0.35 + 0.65 * lungs)
    clav = np.exp(-(((v + 0.4 - 0.2 * (np.abs(u) - 0.05)) / 0.018) ** 2)) * _sig(0.32 - np.abs(u), 0.01)
    img = img + (a.bone * ribs + 0.12 * clav * _sig(np.abs(u) - 0.05, 0.01)) * body
    return img, lungs


def _upsample(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2D float32 array to ``shape`` (pixel-area centres aligned, edges clamped)."""
    for axis, n in enumerate(shape):
        m = x.shape[axis]
        pos = np.clip((np.arange(n, dtype=np.float32) + 0.5) * (m / n) - 0.5, 0, m - 1)
        i0 = pos.astype(np.intp)
        i1 = np.minimum(i0 + 1, m - 1)
        w = (pos - i0).reshape((-1, 1) if axis == 0 else (1, -1))
        a, b = np.take(x, i0, axis=axis), np.take(x, i1, axis=axis)
        x = a + (b - a) * w
    return x


def _half(shape: tuple[int, int]) -> tuple[int, int]:
    return (max(1, (shape[0] + 1) // 2), max(1, (shape[1] + 1) // 2))


def lung_mask(anatomy: Anatomy, shape: tuple[int, int]) -> np.ndarray:
    """The lung fields of a phantom of ``shape`` = (rows, cols) drawn with ``anatomy``, H×W bool."""
    lo = _half(shape)
    u, v = _coords(lo, anatomy)
    return _upsample(_lung_fields(u, v, anatomy), shape) > 0.5


def render_phantom(
    shape: tuple[int, int],
    anatomy: Anatomy,
    rng: np.random.Generator,
    lesion: Lesion | bool | None = None,
    *,
    lesion_contrast: float | None = None,
) -> Phantom:
    """Draw a chest-radiograph phantom of ``shape`` = (rows, cols) in display space (0..1, bright = dense).

    ``lesion``: None/False for none, True for a random one inside a lung (radius 4–8 % of the width), or a
    :class:`Lesion` to put exactly there. Returns the image, the lung mask and the lesion actually drawn.
    The smooth anatomy is drawn at half resolution and interpolated; noise and lesion at full resolution.
    """
    shape = (int(shape[0]), int(shape[1]))
    img_lo, lungs_lo = _layers(_half(shape), anatomy, rng)
    img = _upsample(img_lo, shape)
    lungs = _upsample(lungs_lo, shape) > 0.5
    drawn: Lesion | None = None
    if lesion is True:
        drawn = place_lesion(lungs, rng, float(rng.uniform(0.04, 0.08)) * shape[1])
    elif isinstance(lesion, tuple):
        drawn = Lesion(*map(float, lesion))
    if drawn is not None:
        contrast = lesion_contrast if lesion_contrast is not None else float(rng.uniform(0.14, 0.22))
        _add_lesion(img, drawn, contrast, rng)
    img += anatomy.noise * rng.standard_normal(shape, dtype=np.float32)
    img = np.clip(img, 0, 1) ** np.float32(anatomy.gamma)
    return Phantom(img.astype(np.float32), lungs, drawn, anatomy)


def _add_lesion(img: np.ndarray, lesion: Lesion, contrast: float, rng: np.random.Generator) -> None:
    """Add a soft-edged textured disc plus a faint halo, in place, within a box of 3 radii."""
    h, w = img.shape
    reach = 3 * lesion.r
    r0, r1 = max(0, int(lesion.cy - reach)), min(h, int(lesion.cy + reach) + 1)
    c0, c1 = max(0, int(lesion.cx - reach)), min(w, int(lesion.cx + reach) + 1)
    if r0 >= r1 or c0 >= c1:
        return
    rows = np.arange(r0, r1, dtype=np.float32)[:, None] - lesion.cy
    cols = np.arange(c0, c1, dtype=np.float32)[None, :] - lesion.cx
    d = np.hypot(rows, cols)
    profile = _sig(lesion.r - d, 0.12 * lesion.r) + 0.25 * np.exp(-((d / (1.6 * lesion.r)) ** 2))
    texture = 1 + 0.15 * _smooth_noise(rng, (r1 - r0, c1 - c0), 6)
    img[r0:r1, c0:c1] += contrast * profile * texture


def make_lesion_image(
    size: tuple[int, int], lesion: Lesion | tuple[float, float, float] | bool | None, seed: int = 0
) -> np.ndarray:
    """An in-memory phantom of ``size`` = (rows, cols): H×W float32 in display space 0..1.

    ``lesion``: None for a normal image, True for a random one inside a lung, or (cx, cy, r) in pixels.
    """
    rng = np.random.default_rng(seed)
    les = Lesion(*lesion) if isinstance(lesion, tuple) else lesion
    return render_phantom((int(size[0]), int(size[1])), random_anatomy(rng), rng, les).image
