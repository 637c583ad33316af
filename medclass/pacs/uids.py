"""UIDs: checking the ones a server sends, and deriving ours so that a re-run stores nothing twice.

An output's SOPInstanceUID is a function of (source SOPInstanceUID, frame, weights sha256, output kind):
a retry after a crash, a ``--resume`` or a second ``watch`` pass produce the very same UID, and a PACS
that already holds it keeps one copy. Derived UIDs use the ``2.25`` root (PS3.5 B.2: a UUID written as
one decimal integer), built from a SHA-256 of the inputs.
"""

from __future__ import annotations

import hashlib
import re
import uuid

from medclass.errors import PacsError

#: PS3.5 9.1: digits and dots, no leading zero in a component, at most 64 characters
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")

#: output kinds (the last part of what a derived UID is made from)
KINDS = ("score-sr", "saliency-sc", "explain-sr", "report-pdf")


def is_uid(value: object) -> bool:
    """Whether ``value`` is a well-formed DICOM UID (a str of digits and dots, ≤ 64 characters)."""
    return isinstance(value, str) and len(value) <= 64 and _UID.fullmatch(value) is not None


def check_uid(value: object, what: str) -> str:
    """``value`` when it is a well-formed UID; else raises :class:`PacsError` naming ``what``."""
    if not is_uid(value):
        shown = repr(value)[:80]
        raise PacsError(f"the server sent a malformed {what} {shown}; this item is skipped")
    return str(value)


def derived_uid(*parts: str) -> str:
    """A UID under ``2.25`` determined by ``parts`` alone (same parts → same UID, ≤ 44 characters)."""
    digest = hashlib.sha256("\x00".join(("medclass", *parts)).encode()).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=5).int}"


def output_uid(source_uid: str, frame: int | None, weights_sha256: str, kind: str) -> str:
    """The SOPInstanceUID of output ``kind`` made from frame ``frame`` of ``source_uid`` by the model
    with weights ``weights_sha256`` (for a per-study output, ``source_uid`` is the StudyInstanceUID).

    Raises :class:`ValueError` for an unknown ``kind`` (a bug).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}; valid: {', '.join(KINDS)}")
    return derived_uid("instance", source_uid, "" if frame is None else str(int(frame)), weights_sha256, kind)


def output_series_uid(study_uid: str, weights_sha256: str, kind: str) -> str:
    """The SeriesInstanceUID that collects output ``kind`` of one model in one study."""
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}; valid: {', '.join(KINDS)}")
    return derived_uid("series", study_uid, weights_sha256, kind)
