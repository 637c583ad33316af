"""One summary row per source (what ``medclass inspect`` prints): decodes every frame, keeps only stats."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np

from medclass.errors import MedclassError
from medclass.ingest.types import Image, Source, Window

NO_WINDOW = "none: percentile at preprocess"
_INTERNAL = ("failed_slices", "exception")


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
    # slices of a series that failed on their own (their rows, see :func:`summarize_rows`); not in as_dict
    failed_slices: list[SourceSummary] = field(default_factory=list, repr=False)
    exception: MedclassError | None = field(default=None, repr=False)  # of an error row, for re-raising

    @property
    def ok(self) -> bool:
        return not self.error

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _INTERNAL}


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
            try:
                img = fr[i]
            except MedclassError as exc:
                if source.format != "dicom-series":
                    raise
                row.failed_slices.append(_failed(source.paths[i], "dicom", exc))  # that file alone fails
                continue
            if first is None:
                first = img
            if middle is None and i >= n // 2:
                middle = img
            px = img.pixels
            if img.mask is not None:
                padded += int(np.count_nonzero(~img.mask))
                px = px[img.mask] if px.ndim == 2 else px[img.mask, :]
            if px.size:
                lo, hi = min(lo, float(px.min())), max(hi, float(px.max()))
        if first is None or middle is None:  # every slice of the series failed
            raise row.failed_slices.pop(0).exception or MedclassError("no slice decoded", source.path)
        meta = first.meta
        row.format = meta.format if source.format != "dicom-series" else source.format
        row.modality = meta.modality
        row.photometric = meta.photometric
        row.shape = "x".join(str(d) for d in first.pixels.shape)
        row.frames = n - len(row.failed_slices)
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
        row.failed_slices.clear()
    return row


def summarize_rows(
    source: Source,
    *,
    max_bytes: int | None = None,
    window_of: Callable[[Image], Window | None] = header_window,
) -> list[SourceSummary]:
    """:func:`summarize`'s row, then one error row per slice of a series that failed on its own.

    A series with one corrupt slice is listed with its readable slices (``frames`` counts them) and the
    corrupt file gets its own row; a series none of whose slices decode is one error row.
    """
    row = summarize(source, max_bytes=max_bytes, window_of=window_of)
    return [row, *row.failed_slices]


def _failed(path: str, fmt: str, exc: MedclassError) -> SourceSummary:
    row = SourceSummary(path=path, format=fmt, error_kind=exc.kind)
    row.error = exc.message if exc.path in (None, path) else str(exc)
    row.exception = exc
    return row
