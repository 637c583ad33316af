"""What a derived DICOM object (Secondary Capture, SR) takes from its source image.

:func:`source_ref` reads, from the source's header and the image's :class:`~medclass.ingest.ImageMeta`:

- **identity**: Study/Series/SOP Instance UIDs and SOP class. Anonymised exports sometimes keep the SOP
  Instance UID only in the file meta (taken from there) or drop the Study UID altogether: the derived
  objects then get a study UID generated from the source's folder and series, so the outputs of one
  series stay together (a PACS cannot file them beside an original that has no study UID).
- **frame**: the 1-based frame number in the source file, for multi-frame and enhanced multi-frame
  sources only. A slice of a series of single-frame files, or a tile of a Siemens mosaic, references the
  whole (single-frame) source file, without a frame number.
- **orientation**: PatientOrientation for the derived image. The source's own value when it is valid;
  otherwise derived from ImageOrientationPatient (per frame for enhanced objects: Plane Orientation
  functional group) as PS3.3 C.7.6.1.1.1 describes: for the row and the column direction, the letters of
  the patient axes (L/R, A/P, H/F; DICOM's LPS frame) in order of decreasing weight, leaving out axes whose
  direction cosine is below 0.001 (rounding noise), e.g. ``("L", "P")`` for an axial CT slice,
  ``("LP", "FA")`` for an oblique one. None when neither is known (projection images without
  PatientOrientation, quadruped sources without one): the derived object then leaves it empty (Type 2).
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medclass.ingest import dicom_meta as dm
from medclass.ingest.types import ImageMeta

#: Direction cosines below this are rounding noise, not obliquity.
OBLIQUE_MIN = 1e-3
_LPS = (("L", "R"), ("P", "A"), ("H", "F"))  # letter for +axis, -axis (DICOM patient coordinates)
_BIPED = re.compile(r"^[APRLHF]{1,3}$")
_QUADRUPED = re.compile(r"^(LE|RT|D|V|CR|CD|R|M|PR|DI|PA|PL|L)+$")


@dataclass(frozen=True)
class SourceRef:
    """The source image as a derived object references it (see the module docstring)."""

    study_uid: str
    series_uid: str
    sop_class_uid: str
    sop_uid: str  # "" when the source has none: then nothing is referenced
    frame_number: int | None  # 1-based, multi-frame sources only
    patient_orientation: tuple[str, str] | None
    anatomical_orientation: str  # "BIPED" (also when unset) or "QUADRUPED"
    study_uid_generated: bool = False


def orientation_letters(direction: np.ndarray) -> str:
    """PatientOrientation letters of one direction (unit vector in LPS), major axis first; "" when zero."""
    v = np.asarray(direction, dtype=float)
    order = np.argsort(-np.abs(v), kind="stable")
    return "".join(_LPS[i][0 if v[i] > 0 else 1] for i in order if abs(v[i]) >= OBLIQUE_MIN)


def _valid_orientation(value: Any, anatomical: str) -> tuple[str, str] | None:
    if value is None or isinstance(value, str) or len(value) != 2:
        return None
    pair = (str(value[0]).strip(), str(value[1]).strip())
    pattern = _QUADRUPED if anatomical == "QUADRUPED" else _BIPED
    return pair if all(pattern.match(v) for v in pair) else None


def patient_orientation(src: Dataset, frame: int = 0) -> tuple[str, str] | None:
    """PatientOrientation for frame ``frame`` of ``src``: its own valid value, else derived from
    ImageOrientationPatient (biped sources only), else None."""
    anatomical = str(src.get("AnatomicalOrientationType", "") or "BIPED").upper()
    own = _valid_orientation(src.get("PatientOrientation"), anatomical)
    if own is not None or anatomical == "QUADRUPED":
        return own
    try:
        _, ori, _ = dm.geometry(src, frame)
    except (TypeError, ValueError):
        return None
    if ori is None or not np.all(np.isfinite(ori)):
        return None
    row, col = orientation_letters(ori[:3]), orientation_letters(ori[3:])
    return (row, col) if row and col else None


def _uid(value: Any) -> str:
    text = str(value or "").strip()
    return text if re.fullmatch(r"[0-9]+(\.[0-9]+)*", text) and len(text) <= 64 else ""


def source_ref(meta: ImageMeta, src: Dataset) -> SourceRef:
    """How derived objects reference image ``meta`` whose source header is ``src`` (no pixels needed)."""
    n_frames = dm.number_of_frames(src)
    frame = meta.index if n_frames > 1 and 0 <= meta.index < n_frames else 0
    folder = os.path.dirname(os.path.abspath(meta.source)) if meta.source else ""
    series_uid = _uid(meta.series_uid or src.get("SeriesInstanceUID"))
    study_uid = _uid(meta.study_uid or src.get("StudyInstanceUID"))
    generated = not study_uid
    if generated:  # stable across runs and across the slices of one series
        study_uid = generate_uid(entropy_srcs=["medclass-study", folder, series_uid, meta.patient_id])
    if not series_uid:
        series_uid = generate_uid(entropy_srcs=["medclass-series", folder, study_uid])
    sop_class = _uid(meta.sop_class_uid or dm.sop_class(src))
    return SourceRef(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_class_uid=sop_class,
        sop_uid=_uid(meta.sop_uid),
        frame_number=frame + 1 if n_frames > 1 and sop_class not in SINGLE_FRAME_CLASSES else None,
        patient_orientation=patient_orientation(src, frame),
        anatomical_orientation=str(src.get("AnatomicalOrientationType", "") or "BIPED").upper(),
        study_uid_generated=generated,
    )


_TYPE2_PATIENT_STUDY = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate",
                        "StudyTime", "AccessionNumber", "ReferringPhysicianName")  # fmt: skip
#: Single-frame image SOP classes: a reference to them never carries a frame number (even when a broken
#: source declares several frames).
SINGLE_FRAME_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.1",  # CR
    "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1",  # DX
    "1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.1.2.1",  # MG
    "1.2.840.10008.5.1.4.1.1.1.3", "1.2.840.10008.5.1.4.1.1.1.3.1",  # IO
    "1.2.840.10008.5.1.4.1.1.2",  # CT
    "1.2.840.10008.5.1.4.1.1.4",  # MR
    "1.2.840.10008.5.1.4.1.1.6.1",  # US (single frame)
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.128",  # PET
    "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL Photographic
})  # fmt: skip


_CONFORMANT = {
    "PatientBirthDate": re.compile(r"\d{8}"),
    "StudyDate": re.compile(r"\d{8}"),
    "StudyTime": re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?"),
    "PatientSex": re.compile(r"[MFO]"),
}


def conformant(keyword: str, value: Any) -> str:
    """``value`` as text when it conforms to the VR of ``keyword`` (dates, times, sex), else "".

    A non-conformant source value (``14:04:38`` as a TM) is dropped rather than copied into an output
    that would then fail validation (or that highdicom refuses to build).
    """
    text = "" if value is None else str(value).strip()
    pattern = _CONFORMANT.get(keyword)
    return text if pattern is None or pattern.fullmatch(text) else ""


def ref_item(ref: SourceRef) -> Dataset:
    """An item of ReferencedImageSequence/SourceImageSequence pointing at the source (and its frame)."""
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_uid
    if ref.frame_number is not None:
        item.ReferencedFrameNumber = ref.frame_number
    return item


def evidence(src: Dataset, ref: SourceRef) -> Dataset:
    """A copy of the source header with the UIDs of ``ref`` filled in where the source lacks them
    (highdicom builds the SR's evidence and study from it)."""
    ds = copy.deepcopy(src)
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            del ds[keyword]
    ds.decode()  # every text value to str with the source's character set, then re-encode as UTF-8
    ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword in _TYPE2_PATIENT_STUDY:  # highdicom copies these from the evidence: empty when absent
        value = conformant(keyword, ds.get(keyword))
        setattr(ds, keyword, value or None)
    ds.StudyInstanceUID = ref.study_uid
    ds.SeriesInstanceUID = ref.series_uid
    ds.SOPClassUID = ref.sop_class_uid
    ds.SOPInstanceUID = ref.sop_uid
    return ds
