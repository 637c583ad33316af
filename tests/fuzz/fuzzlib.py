"""Mutation fuzzing of ``medclass.ingest.read``: seed corpus, format-aware mutators, isolated worker.

Shared by ``tests/test_hardening_fuzz.py`` (short, hypothesis-driven, in CI) and ``tests/fuzz/run_long.py``
(long, seeded random). Every case runs in a separate worker process (:class:`Worker`) so that

- a native decoder that aborts the process (gdcm, a Rust panic that is not caught...) is *seen* as a
  crash (the worker dies with a signal) instead of killing the test run; the input is saved;
- a hang is bounded twice: ``signal.alarm`` inside the worker, and a hard deadline in the parent that
  kills and restarts the worker;
- memory is bounded: the worker runs with ``RLIMIT_AS`` (an allocation above it is a ``MemoryError``, a
  finding, instead of the machine swapping) and reports its peak RSS growth per case.

Allowed outcomes of a case: ``ok`` (every image has finite float32 pixels of a sane shape) or
``medclass`` (a :class:`medclass.errors.MedclassError` subclass; its ``kind`` is recorded). Anything else
(``other``: another exception, ``bad-image``, ``timeout``, ``crash``, ``memory``) is a finding.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORKER = HERE / "worker.py"

ALLOWED = ("ok", "medclass")
CASE_TIMEOUT_S = 10  # signal.alarm inside the worker
HARD_TIMEOUT_S = 25  # parent kills the worker past this
FUZZ_MAX_IMAGE_BYTES = 256 << 20  # MEDCLASS_MAX_IMAGE_BYTES in the worker
WORKER_AS_LIMIT = 6 << 30  # RLIMIT_AS of the worker (virtual memory)
MAX_RSS_GROWTH_KB = 1_500_000  # peak RSS growth allowed for one case (256 MiB limit × copies)
BIG_ALLOC_KB = 1 << 20  # a single case that reserves over 1 GiB is noted (not failed: see README)


def findings_dir() -> Path:
    """Where inputs that gave a forbidden outcome are kept: ``$FUZZ_FINDINGS`` or a temp folder."""
    import tempfile

    return Path(os.environ.get("FUZZ_FINDINGS") or Path(tempfile.gettempdir()) / "medclass-fuzz-findings")


# --- seed corpus -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Seed:
    name: str  # file name to write (its suffix matters for .nii.gz)
    fmt: str  # dicom, nifti, png, jpeg
    data: bytes


def _shared_data() -> Path:
    env = os.environ.get("MEDCLASS_DATA_ROOT")
    return Path(env) if env else REPO.parent / "shared" / "data"


_SHARED_DICOM = [
    "dicom_samples/highdicom/dx_image.dcm",
    "dicom_samples/pydicom-data/emri_small_jpeg_2k_lossless.dcm",
    "dicom_samples/pydicom-data/OBXXXX1A_rle.dcm",
    "dicom_samples/pydicom-data/US1_J2KI.dcm",
    "dicom_samples/pydicom-data/JPEG-LL.dcm",
    "dicom_samples/pydicom-data/JPGLosslessP14SV1_1s_1f_8b.dcm",
    "dicom_samples/dcmqi_ct-3slice/liver.dcm",
    "dicom_samples/dcm_qa_ts/9.dcm",
    "dicom_samples/torchxrayvision/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
]
_PYDICOM = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "JPEG2000.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_rle.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "rtdose.dcm",
    "emri_small.dcm",
    "US1_UNCR.dcm",
    "JPEG-lossy.dcm",
]
_SHARED_NIFTI = [
    "nifti_samples/totalsegmentator/example_seg_mr.nii.gz",
    "nifti_samples/totalsegmentator/example_seg.nii.gz",
    "nifti_samples/dcm_qa_ts/1.nii",
]
_NIBABEL = ["standard.nii.gz", "example_nifti2.nii.gz", "anatomical.nii", "resampled_anat_moved.nii"]


def _generated_pngs() -> list[Seed]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    arrays = {
        "grey8.png": (rng.integers(0, 256, (40, 33), dtype=np.uint8), None),
        "grey16.png": (rng.integers(0, 65536, (31, 24), dtype=np.uint16), None),
        "rgb.png": (rng.integers(0, 256, (20, 27, 3), dtype=np.uint8), None),
        "rgba.png": (rng.integers(0, 256, (18, 22, 4), dtype=np.uint8), None),
    }
    for name, (arr, mode) in arrays.items():
        buf = io.BytesIO()
        (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(buf, "PNG")
        out.append(Seed(name, "png", buf.getvalue()))
    buf = io.BytesIO()
    Image.fromarray(arrays["grey8.png"][0]).convert("P").save(buf, "PNG")
    out.append(Seed("palette.png", "png", buf.getvalue()))
    buf = io.BytesIO()
    Image.fromarray(arrays["rgb.png"][0]).save(buf, "JPEG", quality=80)
    out.append(Seed("small.jpeg", "jpeg", buf.getvalue()))
    buf = io.BytesIO()
    Image.fromarray(arrays["grey8.png"][0]).save(buf, "JPEG", quality=80, progressive=True)
    out.append(Seed("progressive.jpeg", "jpeg", buf.getvalue()))
    return out


def seed_corpus(*, real: bool = True) -> list[Seed]:
    """Real DICOM/NIfTI/JPEG files (shared data, pydicom and nibabel test files) and generated PNG/JPEG.

    Files that are not present are left out (the caller decides whether an empty format is an error).
    """
    seeds: list[Seed] = []
    shared = _shared_data()
    if real:
        for rel in _SHARED_DICOM:
            p = shared / rel
            if p.is_file():
                seeds.append(Seed(p.name if p.suffix == ".dcm" else "noext", "dicom", p.read_bytes()))
        try:
            from pydicom.data import get_testdata_file

            for name in _PYDICOM:
                f = get_testdata_file(name, download=False)
                if f:
                    seeds.append(Seed(name, "dicom", Path(f).read_bytes()))
        except ImportError:
            pass
        for rel in _SHARED_NIFTI:
            p = shared / rel
            if p.is_file():
                seeds.append(Seed(p.name, "nifti", p.read_bytes()))
        try:
            import nibabel

            d = Path(nibabel.__file__).parent / "tests" / "data"
            for name in _NIBABEL:
                if (d / name).is_file():
                    seeds.append(Seed(name, "nifti", (d / name).read_bytes()))
        except ImportError:
            pass
        kermany = shared / "kermany_cxr_pneumonia_fullres" / "images"
        if kermany.is_dir():
            jpgs = sorted(kermany.rglob("*.jpeg"), key=lambda p: p.stat().st_size)[:3]
            seeds += [Seed(p.name, "jpeg", p.read_bytes()) for p in jpgs]
    seeds += _generated_pngs()
    return seeds


# --- DICOM structure ---------------------------------------------------------------------------------
_LONG_VRS = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV"}
VRS = [b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD",
       b"OF", b"OL", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"TM", b"UI", b"UL", b"UN", b"US",
       b"UT", b"XX", b"\x00\x00"]  # fmt: skip


@dataclasses.dataclass
class Element:
    tag: int  # group << 16 | element
    explicit: bool
    vr_at: int | None  # offset of the 2 VR bytes (explicit VR)
    len_at: int  # offset of the length field
    len_size: int  # 2 or 4
    value_at: int
    length: int


def dicom_elements(data: bytes, limit: int = 400) -> list[Element]:
    """Top-level data elements of a little-endian DICOM stream (after the preamble, if any).

    Walks the file meta group (explicit VR) then the data set (explicit or implicit VR, from the meta's
    Transfer Syntax UID). Stops at an undefined length other than Pixel Data, or at anything odd:
    a best-effort map of where lengths and values lie, for mutation.
    """
    pos = 132 if data[128:132] == b"DICM" else 0
    out: list[Element] = []
    implicit_ds = False
    big_endian = False
    while pos + 8 <= len(data) and len(out) < limit:
        group, elem = struct.unpack_from("<HH", data, pos)
        in_meta = group == 0x0002
        if not in_meta and big_endian:
            break
        explicit = in_meta or not implicit_ds
        vr = data[pos + 4 : pos + 6]
        if explicit and not (vr.isalpha() and vr.isupper()):
            if in_meta:
                break
            explicit = False  # some files lie about the syntax
        if explicit:
            if vr in _LONG_VRS:
                if pos + 12 > len(data):
                    break
                (length,) = struct.unpack_from("<I", data, pos + 8)
                e = Element(group << 16 | elem, True, pos + 4, pos + 8, 4, pos + 12, length)
            else:
                (length,) = struct.unpack_from("<H", data, pos + 6)
                e = Element(group << 16 | elem, True, pos + 4, pos + 6, 2, pos + 8, length)
        else:
            (length,) = struct.unpack_from("<I", data, pos + 4)
            e = Element(group << 16 | elem, False, None, pos + 4, 4, pos + 8, length)
        out.append(e)
        if e.tag == 0x00020010:
            ts = data[e.value_at : e.value_at + length].rstrip(b"\x00 ")
            implicit_ds = ts == b"1.2.840.10008.1.2"
            big_endian = ts == b"1.2.840.10008.1.2.2"
        if length == 0xFFFFFFFF:
            if e.tag == PIXEL_DATA:
                break
            # an undefined-length sequence: skip to its delimiter (best effort; nesting not tracked)
            end = data.find(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", e.value_at)
            if end < 0:
                break
            pos = end + 8
            continue
        pos = e.value_at + length
    return out


# tags whose value we like to set to absurd numbers
ROWS, COLS, FRAMES = 0x00280010, 0x00280011, 0x00280008
SAMPLES, BITS_ALLOC, BITS_STORED, HIGH_BIT, PIXREP = (
    0x00280002,
    0x00280100,
    0x00280101,
    0x00280102,
    0x00280103,
)
PHOTOMETRIC, PIXEL_DATA, TSUID, PLANAR = 0x00280004, 0x7FE00010, 0x00020010, 0x00280006
_US_TAGS = {ROWS, COLS, SAMPLES, BITS_ALLOC, BITS_STORED, HIGH_BIT, PIXREP, PLANAR}
_US_VALUES = [0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 31, 32, 33, 64, 255, 256, 4096, 32767, 32768, 65535]
_IS_FRAMES = [b"0 ", b"-1", b"1 ", b"2 ", b"99", b"65535 ", b"99999999", b"1e9 ", b"NaN ", b"2.5 ", b"  "]
_PHOTOMETRIC = [b"MONOCHROME1 ", b"MONOCHROME2 ", b"RGB ", b"PALETTE COLOR ", b"YBR_FULL", b"YBR_FULL_422",
                b"HSV ", b"XYZ ", b"", b"ARGB"]  # fmt: skip
_TS = [b"1.2.840.10008.1.2\x00", b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.2\x00",
       b"1.2.840.10008.1.2.4.50\x00", b"1.2.840.10008.1.2.4.70\x00", b"1.2.840.10008.1.2.4.90\x00",
       b"1.2.840.10008.1.2.4.80\x00", b"1.2.840.10008.1.2.5\x00", b"1.2.840.10008.1.2.1.99", b"9.9.9\x00"]  # fmt: skip


def _set_value(data: bytearray, e: Element, value: bytes) -> bytearray:
    """Replace the value of ``e`` with ``value`` and fix its length field (a well-formed edit)."""
    fmt = "<H" if e.len_size == 2 else "<I"
    if e.len_size == 2 and len(value) > 0xFFFF:
        value = value[:0xFFFF]
    end = e.value_at + (e.length if e.length != 0xFFFFFFFF else 0)
    out = data[: e.value_at] + value + data[end:]
    struct.pack_into(fmt, out, e.len_at, len(value))
    return out


# --- mutators ----------------------------------------------------------------------------------------
Mutator = Callable[[bytearray, random.Random], bytearray]


def m_truncate(d: bytearray, r: random.Random) -> bytearray:
    return d[: r.randrange(0, max(1, len(d)))]


def m_truncate_tail(d: bytearray, r: random.Random) -> bytearray:
    return d[: max(0, len(d) - r.randint(1, 64))]


def m_bitflips(d: bytearray, r: random.Random) -> bytearray:
    for _ in range(r.randint(1, 8)):
        if d:
            i = r.randrange(len(d))
            d[i] ^= 1 << r.randrange(8)
    return d


def m_header_bytes(d: bytearray, r: random.Random) -> bytearray:
    """Random bytes in the first 1 KiB, where the headers live."""
    for _ in range(r.randint(1, 6)):
        if d:
            d[r.randrange(min(len(d), 1024))] = r.randrange(256)
    return d


def m_splice(d: bytearray, r: random.Random) -> bytearray:
    """Delete or duplicate a chunk (shifts every later offset)."""
    if len(d) < 4:
        return d
    a = r.randrange(len(d))
    b = min(len(d), a + r.randint(1, 256))
    return d[:a] + d[b:] if r.random() < 0.5 else d[:b] + d[a:b] + d[b:]


def m_interesting_int(d: bytearray, r: random.Random) -> bytearray:
    """An int16/int32 boundary value at a random header offset."""
    if len(d) < 8:
        return d
    i = r.randrange(min(len(d) - 4, 2048))
    v = r.choice([0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF])
    struct.pack_into("<I" if v > 0xFFFF else "<H", d, i, v)
    return d


def m_dicom_length(d: bytearray, r: random.Random) -> bytearray:
    """Overwrite an element's length field: huge, zero, odd, off by a few, undefined."""
    els = dicom_elements(bytes(d))
    if not els:
        return m_bitflips(d, r)
    e = r.choice(els)
    top = 0xFFFF if e.len_size == 2 else 0xFFFFFFFF
    v = r.choice([0, 1, 3, e.length + 1, max(0, e.length - 1), e.length + 2, e.length * 2, top, top - 1,
                  r.randrange(top + 1)])  # fmt: skip
    struct.pack_into("<H" if e.len_size == 2 else "<I", d, e.len_at, min(v, top))
    return d


def m_dicom_vr(d: bytearray, r: random.Random) -> bytearray:
    """Swap an element's VR for another (explicit VR only): length field size and meaning change."""
    els = [e for e in dicom_elements(bytes(d)) if e.vr_at is not None]
    if not els:
        return m_bitflips(d, r)
    e = r.choice(els)
    d[e.vr_at : e.vr_at + 2] = r.choice(VRS)
    return d


def m_dicom_pixel_attr(d: bytearray, r: random.Random) -> bytearray:
    """Absurd Rows/Columns/BitsAllocated/... (US), NumberOfFrames (IS), photometric, transfer syntax."""
    els = {e.tag: e for e in dicom_elements(bytes(d))}
    choices = [t for t in (*_US_TAGS, FRAMES, PHOTOMETRIC, TSUID, PIXEL_DATA) if t in els]
    if not choices:
        return m_bitflips(d, r)
    tag = r.choice(choices)
    e = els[tag]
    if tag in _US_TAGS and e.length == 2:
        struct.pack_into("<H", d, e.value_at, r.choice(_US_VALUES))
        return d
    if tag == FRAMES:
        return _set_value(d, e, r.choice(_IS_FRAMES))
    if tag == PHOTOMETRIC:
        return _set_value(d, e, r.choice(_PHOTOMETRIC))
    if tag == TSUID:
        return _set_value(d, e, r.choice(_TS))
    if tag == PIXEL_DATA and e.length != 0xFFFFFFFF:  # drop or shorten the pixels, lengths consistent
        return _set_value(d, e, bytes(d[e.value_at : e.value_at + r.randrange(0, max(1, e.length))]))
    return m_bitflips(d, r)


def m_dicom_add_frames(d: bytearray, r: random.Random) -> bytearray:
    """Insert a NumberOfFrames element (huge) into a single-frame file (after the meta group)."""
    els = dicom_elements(bytes(d))
    after = [e for e in els if e.tag > FRAMES]
    if not after or any(e.tag == FRAMES for e in els):
        return m_dicom_pixel_attr(d, r)
    e = after[0]
    start = e.vr_at - 4 if e.vr_at is not None else e.len_at - 4
    val = r.choice([b"99999999", b"65535 ", b"1000"])
    if e.explicit:
        elem = struct.pack("<HH", 0x0028, 0x0008) + b"IS" + struct.pack("<H", len(val)) + val
    else:
        elem = struct.pack("<HHI", 0x0028, 0x0008, len(val)) + val
    return d[:start] + elem + d[start:]


# NIfTI-1 header: sizeof_hdr 0, dim[8] int16 at 40, datatype 70, bitpix 72, pixdim[8] float at 76,
# vox_offset float at 108, scl_slope 112, scl_inter 116, magic at 344.
def _nifti_unpack(d: bytearray) -> tuple[bytearray, bool]:
    if d[:2] == b"\x1f\x8b":
        try:
            return bytearray(gzip.decompress(bytes(d))), True
        except Exception:
            return d, False
    return d, False


def _nifti_pack(d: bytearray, gz: bool, r: random.Random) -> bytearray:
    if not gz:
        return d
    out = bytearray(gzip.compress(bytes(d), compresslevel=1, mtime=0))
    return m_truncate_tail(out, r) if r.random() < 0.15 else out


def _nifti_endian(d: bytearray) -> str:
    return ">" if struct.unpack_from("<i", d, 0)[0] not in (348, 540) else "<"


def m_nifti_dims(d: bytearray, r: random.Random) -> bytearray:
    raw, gz = _nifti_unpack(d)
    if (
        len(raw) < 348
        or struct.unpack_from("<i", raw, 0)[0] == 540
        or struct.unpack_from(">i", raw, 0)[0] == 540
    ):
        return m_bitflips(d, r)
    en = _nifti_endian(raw)
    for _ in range(r.randint(1, 3)):
        i = r.randrange(8)
        v = r.choice([-1, 0, 1, 2, 3, 4, 5, 7, 8, 100, 1000, 4096, 32767, -32768])
        struct.pack_into(en + "h", raw, 40 + 2 * i, v)
    return _nifti_pack(raw, gz, r)


def m_nifti_fields(d: bytearray, r: random.Random) -> bytearray:
    """datatype/bitpix/vox_offset/scl_slope/pixdim/sizeof_hdr set to odd values."""
    raw, gz = _nifti_unpack(d)
    if (
        len(raw) < 348
        or struct.unpack_from("<i", raw, 0)[0] == 540
        or struct.unpack_from(">i", raw, 0)[0] == 540
    ):
        return m_bitflips(d, r)
    en = _nifti_endian(raw)
    field = r.choice(["datatype", "bitpix", "vox", "slope", "inter", "pixdim", "sizeof", "qform"])
    if field == "datatype":
        struct.pack_into(en + "h", raw, 70, r.choice([0, 1, 2, 4, 8, 16, 32, 64, 128, 255, 256, 512, 768,
                                                      1024, 1536, 1792, 2048, 2304, 9999, -1]))  # fmt: skip
    elif field == "bitpix":
        struct.pack_into(en + "h", raw, 72, r.choice([0, 1, 7, 8, 16, 33, 64, -8]))
    elif field == "vox":
        struct.pack_into(en + "f", raw, 108, r.choice([0.0, 1.0, 347.0, 352.0, 353.5, 1e9, -352.0,
                                                       float("nan"), float("inf")]))  # fmt: skip
    elif field in ("slope", "inter"):
        struct.pack_into(en + "f", raw, 112 if field == "slope" else 116,
                         r.choice([0.0, -1.0, 1e38, float("nan"), float("inf"), -float("inf"), 1e-38]))  # fmt: skip
    elif field == "pixdim":
        struct.pack_into(en + "f", raw, 76 + 4 * r.randrange(8), r.choice([0.0, -1.0, float("nan"), 1e30]))
    elif field == "sizeof":
        struct.pack_into(en + "i", raw, 0, r.choice([0, 347, 349, 540, -1]))
    else:  # qform/sform codes and quaternion garbage
        struct.pack_into(en + "h", raw, 252 + 2 * r.randrange(2), r.choice([0, 1, 2, 3, 4, 99, -1]))
        struct.pack_into(en + "f", raw, 256 + 4 * r.randrange(12), r.choice([float("nan"), 1e30, -1e30, 2.0]))
    return _nifti_pack(raw, gz, r)


def m_nifti_inner(d: bytearray, r: random.Random) -> bytearray:
    """Generic mutations of the decompressed stream, recompressed (gets past the gzip CRC)."""
    raw, gz = _nifti_unpack(d)
    raw = r.choice([m_bitflips, m_header_bytes, m_truncate, m_interesting_int, m_splice])(raw, r)
    return _nifti_pack(raw, gz, r)


def _png_chunks(d: bytes) -> list[tuple[int, bytes, int]]:
    """(offset, type, length) of the chunks of a PNG."""
    out, pos = [], 8
    while pos + 8 <= len(d):
        (length,) = struct.unpack_from(">I", d, pos)
        out.append((pos, bytes(d[pos + 4 : pos + 8]), length))
        pos += 12 + length
    return out


def _png_fix_crc(d: bytearray, off: int, length: int) -> None:
    if off + 12 + length <= len(d):
        struct.pack_into(">I", d, off + 8 + length, zlib.crc32(bytes(d[off + 4 : off + 8 + length])))


def m_png_ihdr(d: bytearray, r: random.Random) -> bytearray:
    """Width/height/bit depth/colour type of IHDR set to absurd values, CRC fixed (so PIL reads on)."""
    if d[:8] != b"\x89PNG\r\n\x1a\n" or len(d) < 33:
        return m_jpeg_sof(d, r)
    field = r.choice(["w", "h", "wh", "depth", "colour", "interlace"])
    big = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 65535, 65536, 100000, 1 << 20]
    if field in ("w", "wh"):
        struct.pack_into(">I", d, 16, r.choice(big))
    if field in ("h", "wh"):
        struct.pack_into(">I", d, 20, r.choice(big))
    if field == "depth":
        d[24] = r.choice([0, 1, 2, 3, 4, 8, 16, 32, 255])
    if field == "colour":
        d[25] = r.choice([0, 1, 2, 3, 4, 5, 6, 7, 255])
    if field == "interlace":
        d[28] = r.choice([0, 1, 2, 255])
    _png_fix_crc(d, 8, 13)
    return d


def m_png_chunk(d: bytearray, r: random.Random) -> bytearray:
    """Corrupt a chunk (length field, or data with CRC fixed: reaches the zlib stream)."""
    chunks = _png_chunks(bytes(d)) if d[:8] == b"\x89PNG\r\n\x1a\n" else []
    if not chunks:
        return m_bitflips(d, r)
    off, _typ, length = r.choice(chunks)
    if r.random() < 0.4:
        struct.pack_into(
            ">I",
            d,
            off,
            r.choice([0, min(length + 1, 0xFFFFFFFF), 0x7FFFFFFF, 0xFFFFFFFF, r.randrange(1 << 31)]),
        )
        return d
    if length:
        for _ in range(r.randint(1, 4)):
            i = off + 8 + r.randrange(length)
            if i < len(d):
                d[i] = r.randrange(256)
        _png_fix_crc(d, off, length)
    return d


def m_jpeg_sof(d: bytearray, r: random.Random) -> bytearray:
    """Height/width/components of the JPEG SOF marker set to absurd values."""
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
        i = d.find(marker)
        if i >= 0 and i + 10 <= len(d):
            field = r.choice(["h", "w", "hw", "n", "p"])
            if field in ("h", "hw"):
                struct.pack_into(">H", d, i + 5, r.choice([0, 1, 65535, 65500, 30000]))
            if field in ("w", "hw"):
                struct.pack_into(">H", d, i + 7, r.choice([0, 1, 65535, 65500, 30000]))
            if field == "n":
                d[i + 9] = r.choice([0, 2, 4, 5, 255])
            if field == "p":
                d[i + 4] = r.choice([0, 1, 12, 16, 255])
            return d
    return m_bitflips(d, r)


GENERIC: dict[str, Mutator] = {
    "truncate": m_truncate,
    "truncate-tail": m_truncate_tail,
    "bitflips": m_bitflips,
    "header-bytes": m_header_bytes,
    "splice": m_splice,
    "interesting-int": m_interesting_int,
}
BY_FORMAT: dict[str, dict[str, Mutator]] = {
    "dicom": {
        "dicom-length": m_dicom_length,
        "dicom-vr": m_dicom_vr,
        "dicom-pixel-attr": m_dicom_pixel_attr,
        "dicom-add-frames": m_dicom_add_frames,
    },
    "nifti": {"nifti-dims": m_nifti_dims, "nifti-fields": m_nifti_fields, "nifti-inner": m_nifti_inner},
    "png": {"png-ihdr": m_png_ihdr, "png-chunk": m_png_chunk},
    "jpeg": {"jpeg-sof": m_jpeg_sof},
}


def mutators_for(fmt: str) -> dict[str, Mutator]:
    """Format-aware mutators first (weighted twice), then the generic ones."""
    return {**BY_FORMAT.get(fmt, {}), **GENERIC}


def mutate(seed: Seed, names: list[str], rng_seed: int) -> bytes:
    """Apply the named mutators in order, each with its own seeded RNG (reproducible)."""
    r = random.Random(rng_seed)
    data = bytearray(seed.data)
    table = mutators_for(seed.fmt)
    for name in names:
        try:
            data = table[name](data, r)
        except (struct.error, IndexError, ValueError, OverflowError):  # a structure earlier mutations broke
            data = m_bitflips(data, r)
    return bytes(data)


# --- worker ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Result:
    outcome: str  # ok, medclass, other, bad-image, timeout, crash, memory, hang
    kind: str = ""  # MedclassError.kind, exception type, or signal name
    message: str = ""
    seconds: float = 0.0
    rss_growth_kb: int = 0  # growth of the worker's peak RSS (memory really touched)
    alloc_peak_kb: int = 0  # tracemalloc peak (includes reserved-but-untouched buffers)
    shapes: list = dataclasses.field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return self.outcome in ALLOWED


class Worker:
    """A long-lived child process that reads files with ``medclass.ingest.read`` on request.

    Protocol: one JSON line per request (``{"path": ...}``) on stdin, one JSON line per answer on stdout.
    A worker that dies (a native abort) or does not answer within :data:`HARD_TIMEOUT_S` is replaced.
    """

    def __init__(self, *, case_timeout: int = CASE_TIMEOUT_S, hard_timeout: int = HARD_TIMEOUT_S) -> None:
        self.case_timeout = case_timeout
        self.hard_timeout = hard_timeout
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ)
        env.update(
            MEDCLASS_MAX_IMAGE_BYTES=str(FUZZ_MAX_IMAGE_BYTES),
            OMP_NUM_THREADS="1",
            OPENBLAS_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
            FUZZ_CASE_TIMEOUT=str(self.case_timeout),
            FUZZ_AS_LIMIT=str(WORKER_AS_LIMIT),
        )
        proc = subprocess.Popen(
            [sys.executable, str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if not os.environ.get("FUZZ_WORKER_STDERR") else None,
            env=env,
            cwd=str(REPO),
        )
        line = self._readline(proc, 120)  # imports
        if line is None or json.loads(line).get("ready") is not True:
            proc.kill()
            raise RuntimeError("fuzz worker did not start")
        return proc

    @staticmethod
    def _readline(proc: subprocess.Popen, timeout: float) -> bytes | None:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = proc.stdout.readline()
        return line or None

    def run(self, path: Path) -> Result:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        proc = self.proc
        assert proc.stdin is not None
        try:
            proc.stdin.write((json.dumps({"path": str(path)}) + "\n").encode())
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = self._readline(proc, self.hard_timeout)
        if line is None:
            try:  # EOF on stdout means the worker is dying: give it a moment to be reaped
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # alive but silent: hung in native code that ignores SIGALRM
                proc.kill()
                proc.wait()
                self.proc = None
                self.restarts += 1
                return Result("hang", "hard-timeout", f"no answer within {self.hard_timeout}s")
            rc = proc.returncode
            self.proc = None
            self.restarts += 1
            name = signal.Signals(-rc).name if rc < 0 else f"exit {rc}"
            return Result("crash", name, f"worker died ({name})")
        return Result(**json.loads(line))

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclasses.dataclass
class Tally:
    cases: int = 0
    outcomes: dict = dataclasses.field(default_factory=dict)  # outcome -> count
    kinds: dict = dataclasses.field(default_factory=dict)  # MedclassError.kind -> count
    findings: list = dataclasses.field(default_factory=list)  # (case id, Result)
    max_rss_growth_kb: int = 0
    max_alloc_peak_kb: int = 0
    big_allocs: list = dataclasses.field(default_factory=list)  # cases that reserved > 1 GiB
    slowest_s: float = 0.0

    def add(self, case_id: str, res: Result) -> None:
        self.cases += 1
        self.outcomes[res.outcome] = self.outcomes.get(res.outcome, 0) + 1
        if res.outcome == "medclass":
            self.kinds[res.kind] = self.kinds.get(res.kind, 0) + 1
        self.max_rss_growth_kb = max(self.max_rss_growth_kb, res.rss_growth_kb)
        self.max_alloc_peak_kb = max(self.max_alloc_peak_kb, res.alloc_peak_kb)
        if res.alloc_peak_kb > BIG_ALLOC_KB:
            self.big_allocs.append((case_id, res.alloc_peak_kb, res.outcome, res.kind))
        self.slowest_s = max(self.slowest_s, res.seconds)
        if not res.allowed or res.rss_growth_kb > MAX_RSS_GROWTH_KB:
            self.findings.append((case_id, res))

    def summary(self) -> str:
        lines = [
            f"cases fuzzed: {self.cases}",
            f"outcomes: {dict(sorted(self.outcomes.items()))}",
            f"distinct error kinds ({len(self.kinds)}): {dict(sorted(self.kinds.items()))}",
            f"max peak-RSS growth in one case: {self.max_rss_growth_kb / 1024:.1f} MiB; "
            f"slowest case: {self.slowest_s:.2f} s",
            f"max transient allocation (tracemalloc) in one case: {self.max_alloc_peak_kb / 1024:.1f} MiB; "
            f"cases reserving > {BIG_ALLOC_KB >> 20} GiB: {len(self.big_allocs)}",
            f"findings: {len(self.findings)}",
        ]
        lines += [
            f"  big allocation {kb >> 10} MiB: {cid} -> {o} {k}" for cid, kb, o, k in self.big_allocs[:10]
        ]
        lines += [f"  {cid}: {res.outcome} {res.kind} {res.message[:200]}" for cid, res in self.findings[:30]]
        return "\n".join(lines)
