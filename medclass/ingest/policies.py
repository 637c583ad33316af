"""Slice policies: which 2D images of a multi-frame file or volume to hand on.

A policy is a callable ``policy(frames) -> list[int]`` (indices into the lazy :class:`Frames`); it may
look at pixels (``max-foreground``) but the cheap ones only look at ``len(frames)``, so nothing else is
decoded. Policies are chosen by name from :data:`SLICE_POLICIES` or ``index:N``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from medclass.errors import ConfigError, MedclassError, look_up
from medclass.ingest.base import Frames


class SlicePolicy(Protocol):
    def __call__(self, frames: Frames) -> list[int]: ...


class AllSlices:
    """Every frame, in order."""

    def __call__(self, frames: Frames) -> list[int]:
        return list(range(len(frames)))


class MiddleSlice:
    """The middle frame (``n // 2``)."""

    def __call__(self, frames: Frames) -> list[int]:
        return [len(frames) // 2]


class IndexSlice:
    """Frame ``index`` (negative counts from the end); out of range raises :class:`ConfigError`."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, frames: Frames) -> list[int]:
        n = len(frames)
        i = self.index + n if self.index < 0 else self.index
        if not 0 <= i < n:
            raise ConfigError(f"slice policy index:{self.index} out of range ({n} slice(s))", frames.path)
        return [i]


class MaxForeground:
    """The frame with the largest foreground area.

    Each frame is reduced to a thumbnail (stride ``step``); the foreground threshold is Otsu's over all
    thumbnails (so it is one threshold for the volume: air vs body for CT, background vs tissue for MR),
    and the frame with the most thumbnail pixels above it wins (ties: the one nearest the middle).
    Only thumbnails are kept, so memory stays small; each frame is decoded once.
    """

    def __init__(self, size: int = 64) -> None:
        self.size = size

    def __call__(self, frames: Frames) -> list[int]:
        n = len(frames)
        if n == 1:
            return [0]
        thumbs = []
        for i in range(n):
            try:
                img = frames[i]
            except MedclassError as exc:  # the choice needs every slice: the volume fails, naming the file
                raise type(exc)(
                    f"max-foreground needs every slice of the volume; slice {i + 1} of {n} is unusable: "
                    f"{exc.message}",
                    exc.path or frames.path,
                ) from exc
            px = img.pixels if img.pixels.ndim == 2 else img.pixels.mean(axis=-1)
            step = max(1, max(px.shape) // self.size)
            t = px[::step, ::step]
            if img.mask is not None:
                m = img.mask[::step, ::step]
                t = np.where(m, t, np.nan)
            thumbs.append(t.astype(np.float32))
        values = np.concatenate([t[np.isfinite(t)].ravel() for t in thumbs])
        thr = otsu_threshold(values)
        counts = np.array([np.count_nonzero(np.nan_to_num(t, nan=-np.inf) > thr) for t in thumbs])
        best = np.flatnonzero(counts == counts.max())
        return [int(best[np.argmin(np.abs(best - (n - 1) / 2))])]


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D array (the value splitting it into two classes of least variance)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[1:][int(np.argmax(between))])


#: name -> factory of a policy. ``index:N`` is parsed by :func:`get_slice_policy`.
SLICE_POLICIES: dict[str, Callable[[], SlicePolicy]] = {
    "all": AllSlices,
    "middle": MiddleSlice,
    "max-foreground": MaxForeground,
}


def get_slice_policy(policy: str | SlicePolicy) -> SlicePolicy:
    """The policy named ``policy`` (``all``, ``middle``, ``max-foreground``, ``index:N``), or ``policy`` itself if callable.

    Raises :class:`ConfigError` listing the valid names for an unknown one.
    """
    if callable(policy):
        return policy
    name = str(policy).strip()
    if name.startswith("index:"):
        try:
            return IndexSlice(int(name.split(":", 1)[1]))
        except ValueError:
            raise ConfigError(f"slice policy {name!r}: N in index:N must be an integer") from None
    return look_up(SLICE_POLICIES, name, "slice policy", also=["index:N"])()
