"""The errors medclass raises on purpose.

Every message is one line that names the file (when there is one) and the problem, and, where it helps,
what to do. The CLI turns any :class:`MedclassError` into that line and an exit code; anything else is a
bug and shows its traceback with ``--traceback``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from os import PathLike
from typing import Any

# C0/C1 control characters (newline, NUL, ESC of terminal escape codes...) and the line/paragraph
# separators that str.splitlines() also breaks on.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_control(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``, ``\\u2028``).

    Messages often quote bytes from a file's header; escaped, they cannot break the message's single
    line or drive the terminal. Text without control characters comes back unchanged.
    """
    return _CONTROL.sub(_escape_one, text)


def _escape_one(m: re.Match[str]) -> str:
    c = m.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


class MedclassError(Exception):
    """Base class of every error medclass raises for bad input, configuration or environment.

    ``path`` (optional) is the file the problem is about; it is put in front of the message. Control
    characters in either are escaped (:func:`escape_control`), so the message is always one line.
    """

    kind = "error"

    def __init__(self, message: str, path: str | PathLike[str] | None = None) -> None:
        self.message = escape_control(str(message))
        self.path = None if path is None else escape_control(str(path))
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def __reduce__(self):  # picklable across worker processes
        return (self.__class__, (self.message, self.path))


# --- input files -------------------------------------------------------------------------------------
class InputError(MedclassError):
    """A file could not be turned into an image."""

    kind = "input"


class UnreadableFileError(InputError):
    """The file does not exist, is empty, or cannot be opened."""

    kind = "unreadable"


class UnsupportedFormatError(InputError):
    """Not a DICOM, NIfTI, PNG or JPEG file (recognised by content)."""

    kind = "unsupported-format"


class CorruptFileError(InputError):
    """The file claims a format but its content is broken (truncated, inconsistent lengths...)."""

    kind = "corrupt"


class NoImageError(InputError):
    """A valid file that holds no image (DICOM SR, SEG without pixels, presentation state...)."""

    kind = "no-image"


class MissingDecoderError(InputError):
    """The pixel data's transfer syntax needs a codec plugin that is not installed."""

    kind = "missing-decoder"


class ImageTooLargeError(InputError):
    """Declared dimensions are absurd; refused before allocating."""

    kind = "too-large"


class InvalidPixelDataError(InputError):
    """Pixels decode but are unusable (NaN/Inf everywhere, 4D+ volume, wrong shape...)."""

    kind = "invalid-pixels"


# --- manifests, configuration, checkpoints -------------------------------------------------------
class ManifestError(MedclassError):
    """A manifest is malformed: missing column, unknown label, bad split, path outside the data root."""

    kind = "manifest"


class UnsafePathError(ManifestError):
    """A path escapes the data root (``..``, absolute path, symlink pointing out)."""

    kind = "unsafe-path"


class ConfigError(MedclassError):
    """A setting is unknown or has an invalid value."""

    kind = "config"


class CheckpointError(MedclassError):
    """A checkpoint is missing, corrupt, tampered with, pickled, or of another architecture."""

    kind = "checkpoint"


class DicomOutputError(MedclassError):
    """A DICOM output (Secondary Capture, SR) cannot be built from this source's header values."""

    kind = "dicom-output"


class DataError(MedclassError):
    """Inputs to a computation are unusable as a whole (an empty split, ids that do not match...)."""

    kind = "data"


class EngineError(MedclassError):
    """The execution engine failed: a Ray cluster that cannot be reached, or a run that left inputs
    without their row."""

    kind = "engine"


# --- servers ------------------------------------------------------------------------------------------
class PacsError(MedclassError):
    """A PACS (DICOMweb or DIMSE) refused a request or answered with something unusable (wrong content
    type, a part that is not DICOM, an oversized payload, malformed UIDs): an error of that study."""

    kind = "pacs"


class PacsUnavailable(PacsError):
    """The PACS could not be reached or answered 5xx/408/429 after the retries: try again later."""

    kind = "pacs-unavailable"


def short_message(exc: BaseException, limit: int | None = 200, *, typed: bool = False) -> str:
    """``exc``'s message on one line (whitespace runs collapsed), cut at ``limit`` characters with "…".

    The one "exception → one line" of medclass. With ``typed``, an exception that is not a
    :class:`MedclassError` (whose messages already say what went wrong) is prefixed with its class name
    (``ValueError: …``), and an empty message gives the class name alone.
    """
    text = " ".join(str(exc).split())
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    if typed and not isinstance(exc, MedclassError):
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text or (type(exc).__name__ if typed else "")


def look_up(
    table: Mapping[str, Any] | Collection[str],
    name: str,
    what: str,
    *,
    error: type[MedclassError] = ConfigError,
    path: str | PathLike[str] | None = None,
    also: Collection[str] = (),
) -> Any:
    """``table[name]`` for a name → value table, ``name`` itself for a collection of valid names.

    The one "unknown name → list the valid ones" of medclass (MONAI's ``look_up_option`` idea, without
    importing MONAI for it). An unknown name raises ``error`` (:class:`ConfigError` by default, naming
    ``path`` when given): ``unknown <what> 'x'; valid: a, b`` (then the ``also`` forms, e.g. ``index:N``).
    """
    try:
        known = name in table
    except TypeError:  # an unhashable value
        known = False
    if known:
        return table[name] if isinstance(table, Mapping) else name
    valid = ", ".join([*map(str, table), *also])
    raise error(f"unknown {what} {name!r}; valid: {valid}", path)


def error_kind(exc: BaseException) -> str:
    """The kind of a per-item failure: the :class:`MedclassError`'s ``kind``, else ``internal`` (a bug in
    medclass, never a property of the input; reported per item so that the run goes on)."""
    return exc.kind if isinstance(exc, MedclassError) else "internal"


def describe(exc: BaseException, limit: int = 500) -> str:
    """``kind: message`` on one line for a per-item error row/log line; the message names the file when
    the error does, and an unexpected exception keeps its type (``internal: KeyError: 'x'``)."""
    return f"{error_kind(exc)}: {short_message(exc, limit, typed=True) or type(exc).__name__}"
