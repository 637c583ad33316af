"""Repair of JPEG scan headers that newer decoders refuse but libjpeg 6b decodes.

Some encoders write Ss/Se/Ah/Al values other than 0/63/0/0 in the scan headers of a *sequential* (SOF0/
SOF1) JPEG; libjpeg 6b warns and decodes the scan as sequential, newer decoders refuse it. The DICOM
reader retries such frames with the header corrected (:func:`repaired_jpeg`).
"""

from __future__ import annotations

from typing import Any


def repaired_jpeg(ds: Any, opts: dict[str, Any]) -> bytes | None:
    """The encapsulated pixel data with every frame's scan header fixed by :func:`sequential_scan_fixed`,
    or None when no frame needed it (or the data cannot be split into frames)."""
    from pydicom.encaps import encapsulate, generate_frames

    try:
        frames = list(generate_frames(ds.PixelData, number_of_frames=int(opts.get("number_of_frames") or 1)))
    except Exception:  # broken encapsulation: the plugins' errors already say so
        return None
    fixed = [sequential_scan_fixed(f) for f in frames]
    if all(f is None for f in fixed):
        return None
    return encapsulate([f if f is not None else o for f, o in zip(fixed, frames, strict=True)])


def sequential_scan_fixed(frame: bytes) -> bytes | None:
    """``frame`` (a JPEG stream) with Ss=0, Se=63, Ah=Al=0 in each scan header of a sequential image.

    Some encoders write other values there (``JPEG-lossy.dcm`` of pydicom's test files has Se=0): libjpeg
    6b only warns and decodes the scan as sequential, newer decoders refuse it. Returns None when there
    is nothing to fix, the image is not sequential DCT (SOF0/SOF1), or the stream is not understood.
    """
    data = bytearray(frame)
    if data[:2] != b"\xff\xd8":
        return None
    pos, sequential, changed = 2, False, False
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # EOI
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # TEM, RSTn, SOI: no length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a SOF
            sequential = marker in (0xC0, 0xC1)
        elif marker == 0xDA:  # SOS: Ns, Ns × (Cs, Td/Ta), Ss, Se, Ah/Al
            if not sequential or pos + 5 > len(data):
                return None
            at = pos + 5 + 2 * data[pos + 4]
            if at + 3 != pos + 2 + length or at + 3 > len(data):
                return None
            if bytes(data[at : at + 3]) != b"\x00\x3f\x00":
                data[at : at + 3] = b"\x00\x3f\x00"
                changed = True
            pos += 2 + length
            while True:  # skip the entropy-coded data up to the next marker (not FF00, not RSTn)
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= len(data):
                    return bytes(data) if changed else None
                nxt = data[pos + 1]
                if nxt == 0 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
                    pos += 1 if nxt == 0xFF else 2
                    continue
                break
            continue
        pos += 2 + length
    return bytes(data) if changed else None
