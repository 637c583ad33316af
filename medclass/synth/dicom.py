"""How a phantom becomes a DICOM file: stored values, headers, transfer syntax.

Display values are mapped to stored values consistently with the photometric interpretation, rescale and
bit depth (:func:`to_stored`), so that any correct reader (modality LUT, VOI window, MONOCHROME1
inversion) displays every file alike. :func:`draw_encoding` draws every storage choice from the header
random stream only, so none of them depends on the label.
"""

from __future__ import annotations

import datetime as _dt
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom import uid
from pydicom.dataset import FileDataset, FileMetaDataset

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


def draw_encoding(
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
    lo, hi = round(enc.lo_frac * top), round(enc.hi_frac * top)  # lo_frac >= 0.02 keeps lo above padding 0
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
class ImageIds:
    """The identifiers and dates written into one file."""

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


def build_dataset(stored: np.ndarray, enc: Encoding, ids: ImageIds, center: float, width: float, pad: int | None,
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


def encode(ds: FileDataset, stored: np.ndarray, syntax: str) -> bytes:
    """The Part 10 bytes of ``ds`` in transfer syntax ``syntax`` (a :data:`TRANSFER_SYNTAXES` name)."""
    if syntax in ("rle", "jpeg2000"):
        ds.compress(TRANSFER_SYNTAXES[syntax], stored, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = TRANSFER_SYNTAXES[syntax]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
