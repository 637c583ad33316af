"""Before any decoding: does the data root exist, and do the manifest's paths point at files in it?

A wrong ``--data-root`` otherwise shows up as hundreds of per-file warnings and then an error without a
hint. :func:`check_files` stats every row's file (cheap: no reading), refuses a missing root or a mostly
missing manifest with one line that says how many were found, under which root and from where it came,
and what was recorded when the manifest was built; a few missing files are returned to the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from medclass.errors import ManifestError
from medclass.manifest.table import Manifest, ManifestRow

log = logging.getLogger(__name__)

MIN_FOUND = 0.5  # below this fraction of files found, the root is wrong rather than a few files lost
SHOWN = 3  # missing paths named in a message


def _found(
    rows: Sequence[ManifestRow], root: Path, allow_outside_root: bool
) -> tuple[int, list[ManifestRow]]:
    """How many rows name an existing file under ``root``, and the rows that do not. Only ``stat``: paths
    that leave the root are counted as found here and refused later, with their line, by
    :meth:`Manifest.resolve`; each distinct path is looked at once (frames share their file)."""
    found, missing = 0, []
    seen: dict[str, bool] = {}
    for row in rows:
        ok = seen.get(row.path)
        if ok is None:
            posix = PurePosixPath(row.path)
            leaves = posix.is_absolute() or ".." in posix.parts or "\\" in row.path
            if leaves and allow_outside_root:
                ok = Path(row.path).is_file() if posix.is_absolute() else (root / posix).is_file()
            else:
                ok = leaves or (root / posix).is_file()
            seen[row.path] = ok
        if ok:
            found += 1
        else:
            missing.append(row)
    return found, missing


def _examples(rows: Sequence[ManifestRow]) -> str:
    more = f" (+{len(rows) - SHOWN} more)" if len(rows) > SHOWN else ""
    return ", ".join(repr(r.path) for r in rows[:SHOWN]) + more


def check_files(
    manifest: Manifest,
    rows: Sequence[ManifestRow] | None = None,
    *,
    min_found: float = MIN_FOUND,
    warn: bool = True,
) -> list[ManifestRow]:
    """Check that ``manifest.data_root`` exists and that ``rows`` (default: all) name files in it.

    Returns the rows whose files are missing (logged as one summarised warning unless not ``warn``). Raises
    :class:`ManifestError` when the root does not exist or fewer than ``min_found`` of the files are found;
    the message gives the count, the root used and where it came from, and the recorded root (with how
    many files are there) or the manifest's folder as the likely fix.
    """
    rows = list(manifest.rows if rows is None else rows)
    root, source = manifest.data_root, manifest.root_source
    allow = manifest.allow_outside_root
    hint = _hint(manifest, rows)
    if not root.is_dir():
        raise ManifestError(f"data root {root} ({source}) is not a folder{hint}", manifest.path)
    found, missing = _found(rows, root, allow)
    if rows and found < min_found * len(rows):
        raise ManifestError(
            f"only {found} of {len(rows)} files found under the data root {root} ({source}); "
            f"missing e.g. {_examples(missing)}{hint}",
            manifest.path,
        )
    if missing and warn:
        log.warning(
            "%s: %d of %d files not found under %s: %s; those rows are skipped",
            manifest.path,
            len(missing),
            len(rows),
            root,
            _examples(missing),
        )
    return missing


def _hint(manifest: Manifest, rows: Sequence[ManifestRow]) -> str:
    """Where the files are, when another root holds more of them."""
    candidates: list[tuple[Path, str]] = []
    if manifest.recorded_root is not None:
        candidates.append((manifest.recorded_root, "the root recorded when it was built"))
    candidates.append((manifest.path.resolve().parent, "the manifest's folder"))
    for root, what in candidates:
        if root.resolve() == manifest.data_root.resolve() or not root.is_dir():
            continue
        found, _ = _found(rows, root, manifest.allow_outside_root)
        if found:
            return f"; {what}, {root}, holds {found} of them: pass --data-root {root}"
    if manifest.recorded_root is not None:
        return f"; it was built against {manifest.recorded_root}"
    return "; paths are relative to the data root: pass --data-root FOLDER (the folder they start in)"
