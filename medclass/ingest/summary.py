"""One summary row per source (what ``medclass inspect`` prints): decodes every frame, keeps only stats."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from medclass.errors import MedclassError
from medclass.ingest.types import Image, Source, Window

NO_WINDOW = "none: percentile at preprocess"


@dataclass
class SourceSummary:
    """What inspection found about one source; ``error`` empty when it decoded."""

    path: str
    format: str
    files: int = 1
    modality: str = ""
    photometric: str = ""
    shape: str = ""  # of one frame, e.g. "512x512" or "480x640x3"
    frames: int = 0
    value_min: float | None = None  # after the modality LUT, before windowing, padding excluded
    value_max: float | None = None
    padded: int = 0  # pixels masked as padding/non-finite, over all frames
    window_center: float | None = None
    window_width: float | None = None
    window_source: str = ""
    error_kind: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def header_window(image: Image) -> Window | None:
    """The default (first) header window of an image, if any."""
    return image.meta.windows[0] if image.meta.windows else None


def summarize(
    source: Source,
    *,
    max_bytes: int | None = None,
    window_of: Callable[[Image], Window | None] = header_window,
) -> SourceSummary:
    """Decode every frame of ``source`` and summarise it; an input error becomes ``error``/``error_kind``.

    ``window_of`` names the window reported for the middle frame (default: its header window; the
    CLI may pass the preprocessor's choice). Only :class:`MedclassError` is caught; anything else is a bug
    and propagates.
    """
    from medclass.ingest import frames as open_frames

    row = SourceSummary(path=source.path, format=source.format, files=len(source.paths))
    try:
        fr = open_frames(source, max_bytes=max_bytes)
        n = len(fr)
        lo, hi, padded = np.inf, -np.inf, 0
        first: Image | None = None
        middle: Image | None = None
        for i in range(n):
            img = fr[i]
            if first is None:
                first = img
            if i == n // 2:
                middle = img
            px = img.pixels
            if img.mask is not None:
                padded += int(np.count_nonzero(~img.mask))
                px = px[img.mask] if px.ndim == 2 else px[img.mask, :]
            if px.size:
                lo, hi = min(lo, float(px.min())), max(hi, float(px.max()))
        assert first is not None and middle is not None  # Frames are never empty
        meta = first.meta
        row.format = meta.format if source.format != "dicom-series" else source.format
        row.modality = meta.modality
        row.photometric = meta.photometric
        row.shape = "x".join(str(d) for d in first.pixels.shape)
        row.frames = n
        row.value_min = lo if np.isfinite(lo) else None
        row.value_max = hi if np.isfinite(hi) else None
        row.padded = padded
        win = window_of(middle)
        if win is None:
            row.window_source = NO_WINDOW
        else:
            row.window_center, row.window_width = float(win.center), float(win.width)
            row.window_source = win.source + (f" ({win.explanation})" if win.explanation else "")
    except MedclassError as exc:
        row.error_kind = exc.kind
        row.error = exc.message if exc.path in (None, row.path) else str(exc)
    return row
