"""Walking paths: files and folders → :class:`Source` list (DICOM slices grouped into volumes)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from medclass.errors import MedclassError, UnsupportedFormatError
from medclass.ingest.series import SliceHeader, group_series, slice_header
from medclass.ingest.sniff import sniff, suffix_format
from medclass.ingest.types import Source

log = logging.getLogger(__name__)


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def discover(paths: Iterable[str | os.PathLike[str]], *, group: bool = True) -> list[Source]:
    """The sources under ``paths`` (files, or folders walked recursively in name order).

    Formats are recognised by content (DICOM files often have no extension). In a folder walk, a file
    that is no image format and has no image extension (README, CSV...) is skipped; one that should have
    been an image (``.dcm`` of garbage, an empty ``.png``) and every path named explicitly, even a missing
    one, becomes a source of format ``unknown``/its sniffed format, so that :func:`load` raises the
    specific error. With ``group``, single-frame CT/MR/PT/NM DICOM slices of one series become one
    ``dicom-series`` source sorted along the slice normal (see :mod:`medclass.ingest.series`).
    Never raises for a bad file.
    """
    found: list[tuple[str, str]] = []  # (path, format)
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for f in _walk(p):
                fmt = _format_of(f, explicit=False)
                if fmt is not None:
                    found.append((str(f), fmt))
        else:
            found.append((str(p), _format_of(p, explicit=True) or "unknown"))

    headers: dict[str, SliceHeader] = {}
    if group:
        for path, fmt in found:
            if fmt == "dicom":
                try:
                    headers[path] = slice_header(path)
                except MedclassError as exc:
                    log.debug("%s: header unreadable, kept as a single file (%s)", path, exc)
    emitted_groups: dict[str, Source] = {}
    for src in group_series(list(headers.values())):
        for member in src.paths:
            emitted_groups[member] = src
    out: list[Source] = []
    seen: set[str] = set()
    for path, fmt in found:
        grouped = emitted_groups.get(path)
        if grouped is not None:
            if grouped.paths[0] not in seen:
                seen.add(grouped.paths[0])
                out.append(grouped)
            continue
        out.append(Source(paths=(path,), format=fmt))
    return out


def _format_of(path: Path, *, explicit: bool) -> str | None:
    try:
        return sniff(path)
    except UnsupportedFormatError:
        if explicit or suffix_format(path):
            return "unknown"
        log.debug("%s: not an image format, skipped", path)
        return None
    except MedclassError:  # unreadable/empty: report it when loading
        return "unknown"
