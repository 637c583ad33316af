"""Which reader a file needs, decided from its first bytes (DICOM files often have no extension)."""

from __future__ import annotations

import os
import struct

from medclass.errors import UnsupportedFormatError
from medclass.ingest.base import head_bytes

_IMAGE_SUFFIXES = {
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".ima": "dicom",
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".npz": "npz",
}


def suffix_format(path: str | os.PathLike[str]) -> str | None:
    """The format an image-like extension suggests (``None`` for no or another extension)."""
    name = os.fspath(path).lower()
    if name.endswith(".nii.gz"):
        return "nifti"
    return _IMAGE_SUFFIXES.get(os.path.splitext(name)[1])


def _looks_like_raw_dicom(head: bytes) -> bool:
    """A DICOM stream without the 128-byte preamble: starts with a group 0002 or 0008 element."""
    if len(head) < 8:
        return False
    for order in "<>":
        group, elem = struct.unpack(order + "HH", head[:4])
        if group not in (0x0002, 0x0008) or elem > 0x0100:
            continue
        vr = head[4:6]
        if vr.isalpha() and vr.isupper():
            return True  # explicit VR
        (length,) = struct.unpack(order + "I", head[4:8])
        if order == "<" and length < 1024:  # implicit VR (always little endian) with a sane length
            return True
    return False


def _is_nifti(head: bytes) -> bool:
    if len(head) < 348:
        return False
    for fmt in ("<i", ">i"):
        (size,) = struct.unpack(fmt, head[:4])
        if size == 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
            return True
        if size == 540 and head[4:8] in (b"n+2\x00", b"ni2\x00"):
            return True
    return False


def sniff(path: str | os.PathLike[str]) -> str:
    """The format of ``path`` from its content: ``dicom``, ``nifti``, ``png``, ``jpeg`` or ``npz``.

    Raises :class:`~medclass.errors.UnreadableFileError` (missing, empty, unreadable) and
    :class:`~medclass.errors.UnsupportedFormatError` (none of these; the message says what it looks like).
    """
    head = head_bytes(path)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if _is_nifti(head):
        return "nifti"
    name = os.fspath(path).lower()
    if head.startswith(b"\x1f\x8b") and name.endswith(".nii.gz"):
        return "nifti"
    if head.startswith(b"PK\x03\x04") and name.endswith(".npz"):
        return "npz"
    if _looks_like_raw_dicom(head):
        return "dicom"
    hint = suffix_format(path)
    what = _describe(head)
    if hint:
        raise UnsupportedFormatError(f"named like a {hint} file but the content is {what}", path)
    raise UnsupportedFormatError(
        f"not a DICOM, NIfTI, PNG, JPEG or MedMNIST npz file (content is {what})", path
    )


def _describe(head: bytes) -> str:
    if head.startswith(b"\x1f\x8b"):
        return "gzip data"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive"
    if head.startswith(b"%PDF"):
        return "a PDF"
    if head.startswith((b"GIF8", b"BM", b"II*\x00", b"MM\x00*")):
        return "another image format (GIF/BMP/TIFF)"
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "unrecognised binary data"
