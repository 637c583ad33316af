"""What ``medclass score`` is asked to score: PATH arguments → an ordered, de-duplicated list of work items.

A PATH is a folder (walked recursively; DICOM recognised by content and single-frame slices of one series
grouped, by :func:`medclass.ingest.discover`), a manifest (a ``.csv`` with a ``path`` column, resolved
against ``data_root``), or a file. Each source is cut into 2D frames by the slice policy; every frame is
one :class:`WorkItem` with a stable :attr:`WorkItem.key` (absolute path + ``#`` + frame index) that the
writer uses to resume. A file that cannot even be opened becomes one item that already carries its error
(``frame`` None, key ``path#``), so that it is reported as a row instead of stopping the run.

Only headers are read here (the cheap policies look at the frame count alone); ``max-foreground`` has to
look at the pixels of every frame of a volume, which happens in this process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from medclass.errors import MedclassError, describe

log = logging.getLogger(__name__)

#: file suffixes read as manifests rather than images
MANIFEST_SUFFIXES = (".csv",)


@dataclass(frozen=True)
class WorkItem:
    """One 2D image to score: frame ``frame`` of the file ``path`` (absolute).

    ``error`` is set when the file could not be opened while expanding the inputs (``frame`` is then
    None). ``file``, when set, is read instead of ``path`` (rows still show and are keyed by ``path``). ``patient_id``/``study_id`` are hints from a manifest row, used when the file has none.
    """

    path: str
    frame: int | None
    error: str = ""
    patient_id: str = ""
    study_id: str = ""
    file: str = ""  # the local file to read when ``path`` names something else (a PACS instance's URL)

    @property
    def key(self) -> str:
        """The stable identity of the item across runs: ``path#frame`` (``path#`` for an unopenable file)."""
        return item_key(self.path, self.frame)


def clean_text(value: str) -> str:
    """``value`` on one line (CR/LF → space), so that every output row is exactly one line."""
    return value.replace("\r", " ").replace("\n", " ")


def item_key(path: str, frame: int | str | None) -> str:
    """The key of frame ``frame`` of ``path`` as the writer stores it (paths are cleaned to one line)."""
    return f"{clean_text(path)}#{'' if frame is None or frame == '' else int(frame)}"


def one_line(exc: BaseException) -> str:
    """A one-line description of ``exc`` for the error column: ``kind: message`` (kind ``internal`` and
    the exception's type for anything that is not a :class:`MedclassError`)."""
    return describe(exc, limit=2000)


def _abs(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fspath(path))


def _is_manifest(path: Path) -> bool:
    return path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file()


def _frames_of_source(source: object, policy: object) -> list[int]:
    from medclass import ingest

    fr = ingest.frames(source)  # type: ignore[arg-type]
    return list(policy(fr))  # type: ignore[operator]


def _expand_source(source: object, policy: object) -> list[WorkItem]:
    """The items of one :class:`~medclass.ingest.Source` (a file, or a DICOM series)."""
    fmt = getattr(source, "format", "")
    paths: tuple[str, ...] = getattr(source, "paths", ())
    if fmt in ("png", "jpeg"):  # a plain 2D image: one frame, nothing to open
        return [WorkItem(_abs(paths[0]), 0)]
    try:
        indices = _frames_of_source(source, policy)
    except Exception as exc:  # the source as a whole is unusable: one row with its error, the run goes on
        return [WorkItem(_abs(paths[0]), None, error=one_line(exc))]
    if fmt == "dicom-series":  # slice i is the single-frame file paths[i]
        return [WorkItem(_abs(paths[i]), 0) for i in indices]
    return [WorkItem(_abs(paths[0]), i) for i in indices]


def _expand_manifest(
    path: Path,
    data_root: str | os.PathLike[str] | None,
    policy: object,
    allow_outside_root: bool = False,
) -> list[WorkItem]:
    from medclass import ingest
    from medclass.manifest import check_files, load_manifest

    manifest = load_manifest(path, data_root, allow_outside_root=allow_outside_root)
    check_files(manifest)  # a wrong root is one error, not a row of failures per file
    out: list[WorkItem] = []
    for row in manifest.rows:
        hints = {"patient_id": row.patient_id, "study_id": row.study_id}
        try:
            resolved = manifest.resolve(row)
        except MedclassError as exc:
            out.append(WorkItem(_abs(Path(manifest.data_root) / row.path), None, one_line(exc), **hints))
            continue
        if row.frame is not None:
            out.append(WorkItem(_abs(resolved), int(row.frame), **hints))
            continue
        for item in _expand_source(ingest.discover([resolved], group=False)[0], policy):
            out.append(WorkItem(item.path, item.frame, item.error, **hints))
    return out


def expand_inputs(
    paths: Sequence[str | os.PathLike[str]],
    *,
    slice_policy: str = "all",
    data_root: str | os.PathLike[str] | None = None,
    allow_outside_root: bool = False,
) -> list[WorkItem]:
    """The ordered, de-duplicated work items for ``paths`` (order of the arguments, folders in name order).

    A manifest row whose path leaves the data root becomes an item carrying that error, unless
    ``allow_outside_root``.

    Raises :class:`~medclass.errors.ConfigError` for an unknown slice policy and
    :class:`~medclass.errors.ManifestError` for a malformed manifest; a bad image file never raises (its
    item carries the error).
    """
    from medclass import ingest

    policy = ingest.get_slice_policy(slice_policy)
    items: list[WorkItem] = []
    for raw in paths:
        p = Path(raw)
        if _is_manifest(p):
            items.extend(_expand_manifest(p, data_root, policy, allow_outside_root))
            continue
        for source in ingest.discover([p]):
            items.extend(_expand_source(source, policy))
    return dedupe(items)


def dedupe(items: Iterable[WorkItem]) -> list[WorkItem]:
    """``items`` without repeated keys (the first occurrence wins), order kept."""
    seen: set[str] = set()
    out: list[WorkItem] = []
    repeats = 0
    for item in items:
        if item.key in seen:
            repeats += 1
            continue
        seen.add(item.key)
        out.append(item)
    if repeats:
        log.info("%d input(s) named more than once are scored once", repeats)
    return out
