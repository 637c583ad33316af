"""What a manifest remembers beside its CSV: the data root it was built against and the positive class.

``mine.csv`` gets ``mine.meta.json``::

    {"data_root": "../scans", "positive_class": "abnormal", "classes": ["abnormal", "normal"],
     "medclass_version": "…"}

``data_root`` is relative to the manifest's folder when the root lies beside or below a common parent
(so moving the two together keeps it valid), else absolute. The CSV itself is unchanged (its sha256 is
what runs record); a manifest without the file works as before.

The positive class of a two-class single-label task is explicit: given (``--positive-class``), recorded,
or the one class that is not a recognised negative name (:data:`NEGATIVE_NAMES`); otherwise
:func:`positive_class` refuses to guess.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medclass.errors import ConfigError, ManifestError
from medclass.fileio import atomic_write_text

log = logging.getLogger(__name__)

# compared case-insensitively, with '_' and '-' read as spaces
NEGATIVE_NAMES: frozenset[str] = frozenset(
    {"normal", "no finding", "negative", "neg", "healthy", "benign", "control", "0", "none", "absent", "no"}
)
META_SUFFIX = ".meta.json"


def meta_path(manifest: Path | str) -> Path:
    """``mine.csv`` → ``mine.meta.json`` beside it."""
    manifest = Path(manifest)
    return manifest.with_name(manifest.stem + META_SUFFIX)


def is_negative_name(name: str) -> bool:
    """Whether ``name`` reads as a negative class (normal, no finding, negative, healthy, benign, control, 0…)."""
    return re.sub(r"[\s_\-]+", " ", name.strip().lower()) in NEGATIVE_NAMES


def positive_class(
    classes: Sequence[str], given: str | None = None, *, recorded: str | None = None, task: str = "multiclass"
) -> str | None:
    """The positive class of a two-class single-label task: ``given``, else ``recorded``, else the one class
    that is not a recognised negative name. None for other tasks (every class is reported).

    Raises :class:`ConfigError` (one line, listing the classes) when ``given``/``recorded`` is not a class,
    or when neither is set and the names do not tell (both or neither look negative).
    """
    classes = list(classes)
    if task != "multiclass" or len(classes) != 2:
        if given is not None and given not in classes:
            raise ConfigError(f"positive class {given!r} is not a class; classes: {', '.join(classes)}")
        return given
    for value, source in ((given, "--positive-class"), (recorded, "the manifest's recorded positive class")):
        if value is not None:
            if value not in classes:
                raise ConfigError(f"{source} {value!r} is not a class; classes: {', '.join(classes)}")
            return value
    candidates = [c for c in classes if not is_negative_name(c)]
    if len(candidates) == 1:
        return candidates[0]
    raise ConfigError(
        f"which class is positive? neither or both of {', '.join(classes)} read as a negative name "
        f"(normal, no finding, negative, healthy, benign, control, 0); pass --positive-class "
        f"{classes[1]} (or {classes[0]})"
    )


def relative_root(data_root: Path, manifest: Path) -> str:
    """``data_root`` as recorded: relative to the manifest's folder when possible, else absolute."""
    root = data_root.resolve()
    base = manifest.resolve().parent
    try:
        return Path(os.path.relpath(root, base)).as_posix()
    except ValueError:  # another drive on Windows
        return str(root)


def write_meta(
    manifest: Path | str, *, data_root: Path, classes: Sequence[str], positive: str | None
) -> Path:
    """Write ``manifest``'s ``.meta.json`` (see the module docstring); returns its path."""
    from medclass import __version__

    manifest = Path(manifest)
    doc: dict[str, Any] = {
        "data_root": relative_root(data_root, manifest),
        "classes": list(classes),
        "positive_class": positive,
        "medclass_version": __version__,
    }
    path = meta_path(manifest)
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    return path


def read_meta(manifest: Path | str) -> dict[str, Any]:
    """The ``.meta.json`` beside ``manifest`` ({} when there is none). Raises :class:`ManifestError` for one
    that is not a JSON object."""
    path = meta_path(manifest)
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"cannot read the manifest's recorded settings ({exc})", path) from exc
    if not isinstance(doc, dict):
        raise ManifestError("the manifest's recorded settings are not a JSON object", path)
    return doc


def recorded_root(manifest: Path | str, doc: dict[str, Any]) -> Path | None:
    """The data root recorded in ``doc`` (relative ones resolved against the manifest's folder)."""
    value = doc.get("data_root")
    if not isinstance(value, str) or not value:
        return None
    root = Path(value)
    return root if root.is_absolute() else Path(os.path.normpath(Path(manifest).resolve().parent / root))
