"""Synthetic chest radiographs with a known focal opacity, written as real DICOM (or PNG) files.

Used by ``medclass demo`` and by tests that need a ground truth: training (a learnable label), Grad-CAM (a
lesion at a recorded position), PHI scanning (marker strings in every header) and ingestion (MONOCHROME1,
rescale, 8/12/14/16-bit, RLE, padding). Every image is a phantom drawn in *display space* (float32 0..1,
bright = dense) and then mapped to stored values consistently with its photometric interpretation,
rescale and bit depth, so that any correct reader displays every file alike. Size, bit depth, photometric,
transfer syntax, modality and every other header value are drawn from their own random stream,
independently of the label, so none of them leaks it.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from pydicom import uid
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import generate_uid
from scipy import ndimage

from medclass.errors import ConfigError
from medclass.fileio import atomic_write_text, write_csv

logger = logging.getLogger(__name__)

LABELS = ("normal", "opacity")
CSV_FIELDS = ["path", "patient_id", "study_id", "label", "lesion_x", "lesion_y", "lesion_r", "sex", "view"]


class Lesion(NamedTuple):
    """A focal opacity: centre ``(cx, cy)`` = (column, row) and radius ``r``, in original pixels."""

    cx: float
    cy: float
    r: float


@dataclass(frozen=True)
class Anatomy:
    """Per-image phantom geometry and contrast, in units of ``min(rows, cols)`` around the image centre."""

    du: float = 0.0  # horizontal shift of the thorax
    dv: float = 0.0  # vertical shift
    scale: float = 1.0  # overall size of the thorax
    lung_w: float = 0.16  # lung half-width (before scale)
    lung_h: float = 0.30  # lung half-height
    dome_r: float = 0.22  # top of the right hemidiaphragm (image left), v below centre
    dome_l: float = 0.25  # top of the left hemidiaphragm (image right)
    heart: float = 1.0  # heart size factor
    soft: float = 0.47  # soft-tissue brightness
    lung: float = 0.16  # lung brightness
    bone: float = 0.09  # rib brightness over the background
    noise: float = 0.012  # quantum noise sigma
    gamma: float = 1.0  # global contrast curve


@dataclass(frozen=True)
class Phantom:
    """One rendered image: ``image`` H×W float32 display space 0..1, ``lungs`` H×W bool, ``lesion``."""

    image: np.ndarray
    lungs: np.ndarray
    lesion: Lesion | None
    anatomy: Anatomy


@dataclass(frozen=True)
class SynthRecord:
    """One written image. ``path`` is relative to the data-set root (POSIX separators)."""

    path: str
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    label: str
    lesion: Lesion | None
    rows: int
    cols: int
    photometric: str
    bits_stored: int
    bits_allocated: int
    transfer_syntax: str
    modality: str
    view: str
    sex: str
    rescale_slope: float
    rescale_intercept: float
    window_center: float
    window_width: float
    padding_value: int | None
    anatomy: Anatomy


@dataclass(frozen=True)
class SynthDataset:
    """What a generator wrote: the root folder, one record per image, and the two truth files."""

    root: Path
    records: list[SynthRecord]
    labels_csv: Path
    lesions_json: Path
    seconds: float = 0.0

    @property
    def patients(self) -> list[str]:
        """Patient ids in order of first appearance."""
        return list(dict.fromkeys(r.patient_id for r in self.records))


# --- phantom ------------------------------------------------------------------------------------------
def random_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw a plausible per-patient variation of size, position and contrast."""
    return Anatomy(
        du=float(rng.normal(0, 0.02)),
        dv=float(rng.normal(0, 0.02)),
        scale=float(rng.uniform(0.9, 1.05)),
        lung_w=float(rng.uniform(0.15, 0.17)),
        lung_h=float(rng.uniform(0.28, 0.32)),
        dome_r=float(rng.uniform(0.17, 0.23)),
        dome_l=float(rng.uniform(0.20, 0.26)),
        heart=float(rng.uniform(0.9, 1.1)),
        soft=float(rng.uniform(0.42, 0.52)),
        lung=float(rng.uniform(0.12, 0.2)),
        bone=float(rng.uniform(0.07, 0.11)),
        noise=float(rng.uniform(0.008, 0.018)),
        gamma=float(rng.uniform(0.85, 1.15)),
    )


def _jitter(a: Anatomy, rng: np.random.Generator) -> Anatomy:
    """The same patient on another image: slightly different positioning and exposure."""
    d = asdict(a)
    d.update(
        du=a.du + float(rng.normal(0, 0.01)),
        dv=a.dv + float(rng.normal(0, 0.01)),
        scale=a.scale * float(rng.uniform(0.98, 1.02)),
        noise=float(rng.uniform(0.008, 0.018)),
        gamma=a.gamma * float(rng.uniform(0.95, 1.05)),
    )
    return Anatomy(**d)


def _coords(shape: tuple[int, int], a: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Normalised (u, v) = (horizontal, vertical) coordinates of pixel centres, as broadcastable arrays."""
    h, w = shape
    s = min(h, w) * a.scale
    u = ((np.arange(w, dtype=np.float32) - (w - 1) / 2) / s - a.du)[None, :]
    v = ((np.arange(h, dtype=np.float32) - (h - 1) / 2) / s - a.dv)[:, None]
    return u, v


def _sig(x: np.ndarray, eps: float) -> np.ndarray:
    return (0.5 + 0.5 * np.tanh(x / (2 * eps))).astype(np.float32)


def _lung_fields(u: np.ndarray, v: np.ndarray, a: Anatomy) -> np.ndarray:
    """Soft (0..1) lung-field mask: two apex-narrowed ellipses cut by the diaphragm domes and the heart."""
    out = np.zeros(np.broadcast_shapes(u.shape, v.shape), np.float32)
    for side, dome in ((-1, a.dome_r), (1, a.dome_l)):
        cu, cv = side * 0.2, -0.04
        t = np.clip((v - (cv - a.lung_h)) / (2 * a.lung_h), 0, 1)
        half_w = a.lung_w * (0.6 + 0.6 * np.sqrt(t))  # rounded apex, wide base
        f = ((u - cu) / half_w) ** 2 + ((v - cv) / a.lung_h) ** 2
        dome_v = dome + 2.2 * (u - cu) ** 2  # dome highest mid-lung, costophrenic angles deep laterally
        out = np.maximum(out, _sig(1 - f, 0.04) * _sig(dome_v - v, 0.006))
    return out * (1 - _heart(u, v, a))


def _heart(u: np.ndarray, v: np.ndarray, a: Anatomy) -> np.ndarray:
    hu, hv = 0.06, 0.15
    f = ((u - hu) / (0.16 * a.heart)) ** 2 + ((v - hv) / (0.12 * a.heart)) ** 2
    return _sig(1 - f, 0.05)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise, zero mean, about unit std, H×W float32."""
    h, w = shape
    grid = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    rows = np.linspace(1, cells + 1, h, dtype=np.float32)
    cols = np.linspace(1, cells + 1, w, dtype=np.float32)
    out = ndimage.map_coordinates(grid, np.meshgrid(rows, cols, indexing="ij"), order=1, mode="nearest")
    return ndimage.uniform_filter(out, size=max(3, min(h, w) // (2 * cells)))


def place_lesion(lungs: np.ndarray, rng: np.random.Generator, radius: float) -> Lesion:
    """A lesion centre drawn uniformly among lung pixels at least ``0.9 * radius`` from the lung edge.

    Falls back to the deepest lung pixel when no pixel is that deep. Raises ConfigError without lungs.
    """
    if not lungs.any():
        raise ConfigError("phantom has no lung field to place a lesion in")
    step = 4  # the distance map on a coarse grid is plenty to choose a centre, and 16x cheaper
    depth = ndimage.distance_transform_edt(np.pad(lungs[::step, ::step], 1))[1:-1, 1:-1] * step
    ok = np.argwhere(depth >= 0.9 * radius + step)
    if len(ok) == 0:
        ok = np.argwhere(depth == depth.max())
    row, col = (ok[rng.integers(len(ok))] + rng.uniform(-0.5, 0.5, 2)) * step  # off the coarse grid
    row, col = min(max(row, 0.0), lungs.shape[0] - 1.0), min(max(col, 0.0), lungs.shape[1] - 1.0)
    return Lesion(round(float(col), 2), round(float(row), 2), round(float(radius), 2))


def _layers(shape: tuple[int, int], a: Anatomy, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The smooth anatomy (no noise, no lesion) and the soft lung mask, both H×W float32."""
    u, v = _coords(shape, a)
    body_f = (np.abs(u) / 0.46) ** 3 + (np.abs(v - 0.1) / 0.72) ** 4
    neck = _sig(0.09 - np.abs(u), 0.01)  # narrower above the shoulders
    body = _sig(1 - body_f, 0.05) * np.maximum(_sig(v + 0.42 + 0.3 * u**2, 0.012), neck)
    lungs = _lung_fields(u, v, a)
    img = 0.03 + (a.soft - 0.03) * body
    img = img + 0.05 * _heart(u, v, a) + 0.06 * _sig(v - a.dome_r - 0.02, 0.03) * body  # heart, abdomen
    lung_val = a.lung + 0.08 * np.clip(v + 0.1, -0.3, 0.4) + 0.02 * _smooth_noise(rng, shape, 24)
    for side in (-1, 1):  # hila: brighter vessels near the mediastinum
        lung_val = lung_val + 0.1 * np.exp(-(((u - side * 0.1) / 0.05) ** 2 + ((v + 0.01) / 0.08) ** 2))
    img = img + (lung_val - img) * lungs
    spine = _sig(0.035 - np.abs(u), 0.004) * _sig(v + 0.5, 0.01)
    img = img + 0.07 * spine * (0.8 + 0.2 * np.cos(2 * np.pi * v / 0.055))
    # posterior ribs: one periodic pattern along arcs rising from the spine, then falling laterally
    t = np.clip((np.abs(u) - 0.03) / 0.42, 0, 1)
    z = (v + 0.09 * np.sin(0.9 * np.pi * t) - 0.12 * t**2 + 0.42) / 0.07
    ribs = np.maximum(np.cos(2 * np.pi * z), 0) ** 6 * _sig(z + 0.25, 0.1)
    # anterior ribs: fainter, sloping down towards the sternum
    z2 = (v - 0.15 * t + 0.33) / 0.085
    ribs = ribs + 0.4 * np.maximum(np.cos(2 * np.pi * z2), 0) ** 6 * _sig(z2 + 0.25, 0.1)
    cage = _sig(a.dome_r + 0.12 + 0.15 * t - v, 0.02) * _sig(t - 0.02, 0.01) * _sig(0.98 - t, 0.01)
    ribs = ribs * cage * (0.35 + 0.65 * lungs)
    clav = np.exp(-(((v + 0.4 - 0.2 * (np.abs(u) - 0.05)) / 0.018) ** 2)) * _sig(0.32 - np.abs(u), 0.01)
    img = img + (a.bone * ribs + 0.12 * clav * _sig(np.abs(u) - 0.05, 0.01)) * body
    return img, lungs


def _upsample(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2D float32 array to ``shape`` (pixel-area centres aligned, edges clamped)."""
    for axis, n in enumerate(shape):
        m = x.shape[axis]
        pos = np.clip((np.arange(n, dtype=np.float32) + 0.5) * (m / n) - 0.5, 0, m - 1)
        i0 = pos.astype(np.intp)
        i1 = np.minimum(i0 + 1, m - 1)
        w = (pos - i0).reshape((-1, 1) if axis == 0 else (1, -1))
        a, b = np.take(x, i0, axis=axis), np.take(x, i1, axis=axis)
        x = a + (b - a) * w
    return x


def _half(shape: tuple[int, int]) -> tuple[int, int]:
    return (max(1, (shape[0] + 1) // 2), max(1, (shape[1] + 1) // 2))


def lung_mask(anatomy: Anatomy, shape: tuple[int, int]) -> np.ndarray:
    """The lung fields of a phantom of ``shape`` = (rows, cols) drawn with ``anatomy``, H×W bool."""
    lo = _half(shape)
    u, v = _coords(lo, anatomy)
    return _upsample(_lung_fields(u, v, anatomy), shape) > 0.5


def render_phantom(
    shape: tuple[int, int],
    anatomy: Anatomy,
    rng: np.random.Generator,
    lesion: Lesion | bool | None = None,
    *,
    lesion_contrast: float | None = None,
) -> Phantom:
    """Draw a chest-radiograph phantom of ``shape`` = (rows, cols) in display space (0..1, bright = dense).

    ``lesion``: None/False for none, True for a random one inside a lung (radius 4–8 % of the width), or a
    :class:`Lesion` to put exactly there. Returns the image, the lung mask and the lesion actually drawn.
    The smooth anatomy is drawn at half resolution and interpolated; noise and lesion at full resolution.
    """
    shape = (int(shape[0]), int(shape[1]))
    img_lo, lungs_lo = _layers(_half(shape), anatomy, rng)
    img = _upsample(img_lo, shape)
    lungs = _upsample(lungs_lo, shape) > 0.5
    drawn: Lesion | None = None
    if lesion is True:
        drawn = place_lesion(lungs, rng, float(rng.uniform(0.04, 0.08)) * shape[1])
    elif isinstance(lesion, tuple):
        drawn = Lesion(*map(float, lesion))
    if drawn is not None:
        contrast = lesion_contrast if lesion_contrast is not None else float(rng.uniform(0.14, 0.22))
        _add_lesion(img, drawn, contrast, rng)
    img += anatomy.noise * rng.standard_normal(shape, dtype=np.float32)
    img = np.clip(img, 0, 1) ** np.float32(anatomy.gamma)
    return Phantom(img.astype(np.float32), lungs, drawn, anatomy)


def _add_lesion(img: np.ndarray, lesion: Lesion, contrast: float, rng: np.random.Generator) -> None:
    """Add a soft-edged textured disc plus a faint halo, in place, within a box of 3 radii."""
    h, w = img.shape
    reach = 3 * lesion.r
    r0, r1 = max(0, int(lesion.cy - reach)), min(h, int(lesion.cy + reach) + 1)
    c0, c1 = max(0, int(lesion.cx - reach)), min(w, int(lesion.cx + reach) + 1)
    if r0 >= r1 or c0 >= c1:
        return
    rows = np.arange(r0, r1, dtype=np.float32)[:, None] - lesion.cy
    cols = np.arange(c0, c1, dtype=np.float32)[None, :] - lesion.cx
    d = np.hypot(rows, cols)
    profile = _sig(lesion.r - d, 0.12 * lesion.r) + 0.25 * np.exp(-((d / (1.6 * lesion.r)) ** 2))
    texture = 1 + 0.15 * _smooth_noise(rng, (r1 - r0, c1 - c0), 6)
    img[r0:r1, c0:c1] += contrast * profile * texture


def make_lesion_image(
    size: tuple[int, int], lesion: Lesion | tuple[float, float, float] | bool | None, seed: int = 0
) -> np.ndarray:
    """An in-memory phantom of ``size`` = (rows, cols): H×W float32 in display space 0..1.

    ``lesion``: None for a normal image, True for a random one inside a lung, or (cx, cy, r) in pixels.
    """
    rng = np.random.default_rng(seed)
    les = Lesion(*lesion) if isinstance(lesion, tuple) else lesion
    return render_phantom(tuple(size), random_anatomy(rng), rng, les).image  # type: ignore[arg-type]


# --- files ------------------------------------------------------------------------------------------
TRANSFER_SYNTAXES: dict[str, uid.UID] = {  # name -> transfer syntax the files may be written in
    "explicit": uid.ExplicitVRLittleEndian,
    "implicit": uid.ImplicitVRLittleEndian,
    "rle": uid.RLELossless,
    "jpeg2000": uid.JPEG2000Lossless,
}

_RESCALES = ((1.0, 0.0), (1.0, 0.0), (0.5, 0.0), (2.0, -1024.0), (1.0, -100.0))


@dataclass(frozen=True)
class Encoding:
    """How one image is stored (drawn from the header stream only, so independent of the label).

    ``lo_frac``/``hi_frac``: the stored range used for display 0..1, as fractions of 2**bits_stored - 1.
    """

    rows: int
    cols: int
    modality: str
    photometric: str
    bits_allocated: int
    bits_stored: int
    slope: float
    intercept: float
    lo_frac: float
    hi_frac: float
    border: tuple[int, int, int, int] | None  # padding width top, bottom, left, right
    syntax: str
    ext: str
    view: str


def _draw_encoding(
    rng: np.random.Generator,
    sizes: Sequence[tuple[int, int]],
    syntaxes: Sequence[str],
    compressed_fraction: float,
) -> Encoding:
    rows, cols = (int(x) for x in sizes[int(rng.random() * len(sizes))])
    modality = "DX" if rng.random() < 0.5 else "CR"
    bits = int(rng.choice([8, 12, 12, 14, 16]))
    rescale = _RESCALES[rng.integers(len(_RESCALES))]
    if modality == "DX" or bits == 8:  # DX "for presentation" requires identity rescale
        rescale = (1.0, 0.0)
    lo, hi = float(rng.uniform(0.02, 0.1)), float(rng.uniform(0.75, 0.97))
    photometric = "MONOCHROME1" if rng.random() < 0.35 else "MONOCHROME2"
    f = rng.uniform(0.015, 0.05, 4)
    widths = (int(f[0] * rows), int(f[1] * rows), int(f[2] * cols), int(f[3] * cols))
    border = widths if rng.random() < 0.3 else None
    # a fixed number of draws whatever the arguments, so that the same seed gives the same phantoms
    compressed, pick = rng.random() < compressed_fraction and len(syntaxes) > 1, rng.random()
    syntax = syntaxes[1 + int(pick * (len(syntaxes) - 1))] if compressed else syntaxes[0]
    ext = ".dcm" if rng.random() < 0.6 else ""
    view = "PA" if rng.random() < 0.7 else "AP"
    return Encoding(rows, cols, modality, photometric, 16 if bits > 8 else 8, bits, *rescale, lo, hi,
                     border, syntax, ext, view)  # fmt: skip


def to_stored(display: np.ndarray, enc: Encoding) -> tuple[np.ndarray, float, float, int | None]:
    """Map display values (0..1) to stored values; returns (stored, window center, width, padding value).

    MONOCHROME2 stores ``lo + d (hi - lo)``; MONOCHROME1 stores ``M - that`` (M = 2**BitsStored - 1), so
    that after the viewer's inversion it displays exactly as the MONOCHROME2 image would. The window
    spans the used stored range in modality units (after rescale). Padding, when present, is 0
    (MONOCHROME2) or M (MONOCHROME1): outside the used range, black on display either way.
    """
    top = 2**enc.bits_stored - 1
    lo, hi = max(1, round(enc.lo_frac * top)), round(enc.hi_frac * top)
    stored = np.rint(lo + np.clip(display, 0, 1) * (hi - lo))
    if enc.photometric == "MONOCHROME1":
        stored = top - stored
        s_min, pad = top - hi, top
    else:
        s_min, pad = lo, 0
    width = enc.slope * (hi - lo)
    center = enc.slope * (s_min + (hi - lo) / 2) + enc.intercept
    dtype = np.uint8 if enc.bits_allocated == 8 else np.uint16
    stored = stored.astype(dtype)
    if enc.border is None:
        return stored, center, width, None
    t, b, left, right = enc.border
    inside = np.zeros(stored.shape, bool)
    inside[t : stored.shape[0] - b, left : stored.shape[1] - right] = True
    stored[~inside] = pad
    return stored, center, width, pad


@dataclass(frozen=True)
class _Ids:
    patient_id: str
    name: str
    birth_date: str
    sex: str
    age: int
    study_uid: str
    study_date: _dt.date
    study_no: int
    accession: str
    series_uid: str
    sop_uid: str
    instance: int


def _dataset(stored: np.ndarray, enc: Encoding, ids: _Ids, center: float, width: float, pad: int | None,
             extra: dict[str, str]) -> FileDataset:  # fmt: skip
    """A complete Part 10 dataset (File Meta, preamble) for one CR or DX image, uncompressed."""
    sop_class = uid.DigitalXRayImageStorageForPresentation if enc.modality == "DX" else uid.ComputedRadiographyImageStorage  # fmt: skip
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid.UID(ids.sop_uid)
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    meta.ImplementationClassUID = uid.PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    date = ids.study_date.strftime("%Y%m%d")
    time_ = f"{9 + ids.instance % 8:02d}{(7 * ids.instance) % 60:02d}00"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ids.sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time_
    ds.AccessionNumber = ids.accession
    ds.Modality = enc.modality
    ds.Manufacturer = "medclass synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "XR CHEST"
    ds.SeriesDescription = f"CHEST {enc.view}"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = ids.name, ids.patient_id, ids.birth_date
    ds.PatientSex, ds.PatientAge = ids.sex, f"{ids.age:03d}Y"
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", enc.view
    ds.StudyInstanceUID, ds.SeriesInstanceUID = ids.study_uid, ids.series_uid
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = str(ids.study_no), 1, ids.instance
    ds.PatientOrientation = ["L", "F"]
    ds.BurnedInAnnotation, ds.LossyImageCompression = "NO", "00"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, enc.photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = enc.bits_allocated, enc.bits_stored, enc.bits_stored - 1
    ds.PixelRepresentation = 0
    spacing = [round(400.0 / min(stored.shape), 4)] * 2  # mm: a 40 cm field of view across the short side
    ds.ImagerPixelSpacing = spacing
    if enc.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if enc.photometric == "MONOCHROME1" else -1
        ds.PresentationLUTShape = "INVERSE" if enc.photometric == "MONOCHROME1" else "IDENTITY"
        ds.DetectorType = "SCINTILLATOR"
        ds.ImageLaterality = "U"
    else:
        ds.PixelSpacing = spacing
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = enc.intercept, enc.slope, "US"
    ds.WindowCenter, ds.WindowWidth = round(center, 3), round(max(width, 1.0), 3)
    ds.WindowCenterWidthExplanation = "NORMAL"
    if pad is not None:
        ds.PixelPaddingValue = pad
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OB" if enc.bits_allocated == 8 else "OW"
    return ds


_PHI_SUFFIXED = ("PatientID", "AccessionNumber")


def _check_args(n_patients: int, images_per_patient: tuple[int, int], positive_fraction: float,
                sizes: Sequence[tuple[int, int]], syntaxes: Sequence[str], phi: dict[str, str]) -> None:  # fmt: skip
    lo, hi = images_per_patient
    if n_patients < 1 or not 1 <= lo <= hi:
        raise ConfigError(f"need n_patients >= 1 and 1 <= images_per_patient[0] <= images_per_patient[1]; got {n_patients}, {images_per_patient}")  # fmt: skip
    if not 0 <= positive_fraction <= 1:
        raise ConfigError(f"positive_fraction must be within 0..1, got {positive_fraction}")
    if not sizes or any(len(s) != 2 or min(s) < 32 for s in sizes):
        raise ConfigError(f"sizes must be (rows, cols) pairs of at least 32 pixels, got {sizes!r}")
    known = TRANSFER_SYNTAXES
    bad = [s for s in syntaxes if s not in known]
    if not syntaxes or bad:
        raise ConfigError(f"unknown transfer syntax {bad or syntaxes!r}; valid: {', '.join(known)}")
    bad = [k for k in phi if tag_for_keyword(k) is None]
    if bad:
        raise ConfigError(f"phi_markers: {bad} are not DICOM keywords (e.g. PatientName, PatientID)")


def _generate(out_dir: str | Path, fmt: str, n_patients: int, images_per_patient: tuple[int, int],
              positive_fraction: float, seed: int, sizes: Sequence[tuple[int, int]],
              phi_markers: dict[str, str] | None, transfer_syntaxes: Sequence[str],
              compressed_fraction: float, lesion_contrast: float | None) -> SynthDataset:  # fmt: skip
    phi = dict(phi_markers or {})
    _check_args(n_patients, images_per_patient, positive_fraction, sizes, transfer_syntaxes, phi)
    t0 = time.perf_counter()
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    label_rng, hdr_rng, pix_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    positive = np.zeros(n_patients, bool)
    positive[label_rng.permutation(n_patients)[: round(n_patients * positive_fraction)]] = True
    extra = {k: v for k, v in phi.items() if k not in ("PatientName", "PatientBirthDate", *_PHI_SUFFIXED)}
    records: list[SynthRecord] = []
    for p in range(n_patients):
        n_img = int(hdr_rng.integers(images_per_patient[0], images_per_patient[1] + 1))
        n_studies = int(hdr_rng.integers(1, 3)) if n_img > 1 else 1
        sex, age = ("F", "M")[int(hdr_rng.integers(2))], int(hdr_rng.integers(18, 91))
        first = _dt.date(2015, 1, 1) + _dt.timedelta(days=int(hdr_rng.integers(0, 3300)))
        later = first + _dt.timedelta(days=int(hdr_rng.integers(20, 400)))
        birth = first - _dt.timedelta(days=365 * age + int(hdr_rng.integers(1, 360)))
        pid = f"{phi['PatientID']}-{p + 1:04d}" if "PatientID" in phi else f"SYN-{p + 1:04d}"
        anatomy = random_anatomy(pix_rng)
        for i in range(n_img):
            study = i * n_studies // n_img
            enc = _draw_encoding(hdr_rng, sizes, transfer_syntaxes, compressed_fraction)
            ph = render_phantom((enc.rows, enc.cols), _jitter(anatomy, pix_rng), pix_rng,
                                lesion=bool(positive[p]), lesion_contrast=lesion_contrast)  # fmt: skip
            ent = [str(seed), str(p), str(study)]
            ids = _Ids(
                patient_id=pid,
                name=phi.get("PatientName", f"SYNTH^P{p + 1:04d}"),
                birth_date=phi.get("PatientBirthDate", birth.strftime("%Y%m%d")),
                sex=sex,
                age=age + (later - first).days // 365 * study,
                study_uid=generate_uid(entropy_srcs=[*ent, "study"]),
                study_date=later if study else first,
                study_no=study + 1,
                accession=f"{phi.get('AccessionNumber', 'SA')}{p + 1:04d}{study + 1}",
                series_uid=generate_uid(entropy_srcs=[*ent, str(i), "series"]),
                sop_uid=generate_uid(entropy_srcs=[*ent, str(i), "sop"]),
                instance=i + 1,
            )
            stem = f"p{p + 1:04d}/s{study + 1}/i{i + 1}"
            if fmt == "png":
                rel, syntax, photometric, bits, bits_alloc = f"{stem}.png", "png", "MONOCHROME2", 8, 8
                center, width, pad, slope, intercept = 127.5, 256.0, None, 1.0, 0.0
                data = _png_bytes(np.rint(ph.image * 255).astype(np.uint8))
            else:
                rel, syntax, photometric = stem + enc.ext, enc.syntax, enc.photometric
                bits, bits_alloc, slope, intercept = (
                    enc.bits_stored,
                    enc.bits_allocated,
                    enc.slope,
                    enc.intercept,
                )
                stored, center, width, pad = to_stored(ph.image, enc)
                ds = _dataset(stored, enc, ids, center, width, pad, extra)
                if syntax in ("rle", "jpeg2000"):
                    ds.compress(TRANSFER_SYNTAXES[syntax], stored, generate_instance_uid=False)
                else:
                    ds.file_meta.TransferSyntaxUID = TRANSFER_SYNTAXES[syntax]
                buf = io.BytesIO()
                ds.save_as(buf, enforce_file_format=True)
                data = buf.getvalue()
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)  # plain write: labels.csv, written last and atomically, marks completion
            records.append(SynthRecord(
                rel, pid, ids.study_uid, ids.series_uid, ids.sop_uid, LABELS[int(positive[p])], ph.lesion,
                enc.rows, enc.cols, photometric, bits, bits_alloc, syntax, enc.modality if fmt == "dicom" else "",
                enc.view, sex, slope, intercept, center, width, pad, ph.anatomy))  # fmt: skip
    json_path, csv_path = root / "lesions.json", root / "labels.csv"
    _write_truth(records, seed, json_path, csv_path)
    seconds = time.perf_counter() - t0
    logger.info(
        "wrote %d %s images of %d patients to %s in %.1f s", len(records), fmt, n_patients, root, seconds
    )
    return SynthDataset(root, records, csv_path, json_path, seconds)


def _png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _write_truth(records: list[SynthRecord], seed: int, json_path: Path, csv_path: Path) -> None:
    images = []
    rows = []
    for r in records:
        les = None if r.lesion is None else {"x": r.lesion.cx, "y": r.lesion.cy, "r": r.lesion.r}
        images.append({"path": r.path, "patient_id": r.patient_id, "label": r.label, "rows": r.rows,
                       "cols": r.cols, "lesion": les})  # fmt: skip
        rows.append({"path": r.path, "patient_id": r.patient_id, "study_id": r.study_uid, "label": r.label,
                     "lesion_x": "" if les is None else les["x"], "lesion_y": "" if les is None else les["y"],
                     "lesion_r": "" if les is None else les["r"], "sex": r.sex, "view": r.view})  # fmt: skip
    doc = {"seed": seed, "coordinates": "pixels of the stored image: x = column, y = row, r = radius",
           "images": images}  # fmt: skip
    atomic_write_text(json_path, json.dumps(doc, indent=1) + "\n")
    write_csv(csv_path, rows, CSV_FIELDS)


def generate_cxr_dataset(
    out_dir: str | Path,
    *,
    n_patients: int = 40,
    images_per_patient: tuple[int, int] = (1, 3),
    positive_fraction: float = 0.5,
    seed: int = 0,
    sizes: Sequence[tuple[int, int]] = ((512, 512), (640, 560), (480, 600)),
    phi_markers: dict[str, str] | None = None,
    transfer_syntaxes: Sequence[str] = ("explicit", "rle"),
    compressed_fraction: float = 0.25,
    lesion_contrast: float | None = None,
) -> SynthDataset:
    """Write a synthetic chest-radiograph DICOM data set to ``out_dir`` and its truth files.

    ``positive_fraction`` of the patients (rounded) have a focal opacity on every image, at a random place
    inside a lung. ``sizes`` are (rows, cols). The first of ``transfer_syntaxes`` (``explicit``,
    ``implicit``, ``rle``, ``jpeg2000``) is used for most files, the others for ``compressed_fraction``
    of them. ``phi_markers`` maps DICOM keywords to values put in every file (PatientID and
    AccessionNumber get a per-patient suffix). Returns the :class:`SynthDataset`; writes ``labels.csv``
    (one row per image, keyed by patient) and ``lesions.json``. Raises ConfigError for bad arguments.
    """
    return _generate(out_dir, "dicom", n_patients, images_per_patient, positive_fraction, seed, sizes,
                     phi_markers, transfer_syntaxes, compressed_fraction, lesion_contrast)  # fmt: skip


def generate_png_dataset(
    out_dir: str | Path,
    *,
    n_patients: int = 40,
    images_per_patient: tuple[int, int] = (1, 3),
    positive_fraction: float = 0.5,
    seed: int = 0,
    sizes: Sequence[tuple[int, int]] = ((512, 512), (640, 560), (480, 600)),
    lesion_contrast: float | None = None,
) -> SynthDataset:
    """Write the same phantoms as :func:`generate_cxr_dataset` with the same seed, as 8-bit PNG files.

    Returns the :class:`SynthDataset` and writes ``labels.csv`` and ``lesions.json`` alike.
    """
    return _generate(out_dir, "png", n_patients, images_per_patient, positive_fraction, seed, sizes,
                     None, ("explicit",), 0.0, lesion_contrast)  # fmt: skip
