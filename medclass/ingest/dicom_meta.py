"""DICOM header → :class:`ImageMeta`, per frame: identity, geometry, header windows, VOI LUT, rescale.

Enhanced (multi-frame) objects keep per-frame values in functional groups: a frame's value comes from
its item of the Per-Frame Functional Groups Sequence, else from the Shared Functional Groups Sequence,
else from the top-level attribute (classic objects).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from medclass.ingest.types import ImageMeta, VoiLut, Window

# SOP classes that hold no diagnostic image even when they carry pixel-like data.
_NOT_IMAGES_PREFIX = (
    "1.2.840.10008.5.1.4.1.1.88.",  # Structured Reports (incl. Key Object Selection .88.59)
    "1.2.840.10008.5.1.4.1.1.11.",  # Presentation States
    "1.2.840.10008.5.1.4.1.1.104.",  # Encapsulated PDF/CDA/STL
)
_NOT_IMAGES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set Storage",
    "1.2.840.10008.5.1.4.1.1.481.5": "RT Plan Storage",
    "1.2.840.10008.5.1.4.1.1.66": "Raw Data Storage",
    "1.2.840.10008.5.1.4.1.1.66.1": "Spatial Registration Storage",
}

#: Single-frame classes whose files of one series are stacked into a volume by :func:`discover`.
VOLUME_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
    "1.2.840.10008.5.1.4.1.1.20": "Nuclear Medicine Image Storage",
}


def sop_class_name(uid: str) -> str:
    """The registered name of a SOP class UID (the UID itself when pydicom does not know it)."""
    from pydicom.uid import UID

    name = UID(uid).name if uid else ""
    return name if name and name != uid else (uid or "not given")


def sop_class(ds: Any) -> str:
    """SOP Class UID, else the file meta's Media Storage SOP Class UID (anonymisers drop the former)."""
    uid = str(ds.get("SOPClassUID", "") or "")
    if not uid:
        uid = str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", "") or "")
    return uid


def non_image_reason(sop_class_uid: str) -> str | None:
    """``"no image (SOP class X)"`` for classes that are not diagnostic images, else None."""
    uid = str(sop_class_uid or "")
    if uid in _NOT_IMAGES or uid.startswith(_NOT_IMAGES_PREFIX):
        return f"no image (SOP class {sop_class_name(uid)})"
    return None


def _str(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _floats(value: Any) -> list[float]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or (hasattr(value, "__iter__") and not isinstance(value, str)):
        return [float(v) for v in value]
    return [float(value)]


@dataclass(frozen=True)
class FrameHeader:
    """What the pixel pipeline needs per frame (besides the meta)."""

    slope: float = 1.0
    intercept: float = 0.0
    has_modality_lut_seq: bool = False


def _group_item(ds: Any, index: int, seq_keyword: str) -> Any | None:
    """The first item of ``seq_keyword`` for frame ``index`` (per-frame, then shared), or None."""
    per = ds.get("PerFrameFunctionalGroupsSequence")
    if per is not None and index < len(per):
        seq = per[index].get(seq_keyword)
        if seq:
            return seq[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        seq = shared[0].get(seq_keyword)
        if seq:
            return seq[0]
    return None


def frame_value(ds: Any, index: int, seq_keyword: str, keyword: str) -> Any:
    """A frame's ``keyword`` from its functional group ``seq_keyword``, else the top-level value."""
    item = _group_item(ds, index, seq_keyword)
    if item is not None and keyword in item:
        return item.get(keyword)
    return ds.get(keyword)


def frame_header(ds: Any, index: int) -> FrameHeader:
    """Rescale slope/intercept of frame ``index`` (Pixel Value Transformation group or top level)."""
    if "ModalityLUTSequence" in ds:
        return FrameHeader(has_modality_lut_seq=True)
    slope = frame_value(ds, index, "PixelValueTransformationSequence", "RescaleSlope")
    intercept = frame_value(ds, index, "PixelValueTransformationSequence", "RescaleIntercept")
    s = _floats(slope)
    i = _floats(intercept)
    return FrameHeader(slope=s[0] if s else 1.0, intercept=i[0] if i else 0.0)


def windows(ds: Any, index: int = 0) -> tuple[Window, ...]:
    """Header windows of a frame (Frame VOI LUT group or Window Center/Width), first = default."""
    item = _group_item(ds, index, "FrameVOILUTSequence")
    src = item if item is not None and "WindowCenter" in item else ds
    centers = _floats(src.get("WindowCenter"))
    widths = _floats(src.get("WindowWidth"))
    if not centers or not widths:
        return ()
    expl_raw = src.get("WindowCenterWidthExplanation", [])
    expl = [expl_raw] if isinstance(expl_raw, str) else [str(e) for e in (expl_raw or [])]
    func = _str(src, "VOILUTFunction").upper() or "LINEAR"
    out = []
    for k, (c, w) in enumerate(zip(centers, widths, strict=False)):
        if w <= 0:  # invalid per PS3.3 C.11.2.1.2
            continue
        out.append(
            Window(
                center=c,
                width=w,
                source="header",
                function=func,
                explanation=expl[k] if k < len(expl) else "",
            )
        )
    return tuple(out)


def voi_lut(ds: Any) -> VoiLut | None:
    """The first VOI LUT Sequence item as :class:`VoiLut`, or None."""
    seq = ds.get("VOILUTSequence")
    if not seq:
        return None
    item = seq[0]
    desc = [int(v) for v in item.LUTDescriptor]
    n = desc[0] or 65536
    data = item.get("LUTData")
    if isinstance(data, (bytes, bytearray)):
        table = np.frombuffer(bytes(data), dtype="<u2")
    else:
        table = np.asarray(data if isinstance(data, (list, tuple)) else [data], dtype=np.uint16)
    table = table[:n].copy()
    return VoiLut(first_mapped=desc[1], table=table, bits=desc[2], explanation=_str(item, "LUTExplanation"))


def geometry(ds: Any, index: int) -> tuple[np.ndarray | None, np.ndarray | None, tuple[float, float] | None]:
    """``(position, orientation(6), pixel_spacing)`` of frame ``index``; None where absent."""
    pos = _floats(frame_value(ds, index, "PlanePositionSequence", "ImagePositionPatient"))
    ori = _floats(frame_value(ds, index, "PlaneOrientationSequence", "ImageOrientationPatient"))
    sp = _floats(frame_value(ds, index, "PixelMeasuresSequence", "PixelSpacing"))
    if not sp:
        sp = _floats(ds.get("ImagerPixelSpacing"))
    spacing = (sp[0], sp[1]) if len(sp) >= 2 else None
    return (
        np.asarray(pos, dtype=float) if len(pos) == 3 else None,
        np.asarray(ori, dtype=float) if len(ori) == 6 else None,
        spacing,
    )


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    """The unit normal of a slice: row direction × column direction (ImageOrientationPatient)."""
    n = np.cross(orientation[:3], orientation[3:])
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else n


def slice_position(ds: Any, index: int) -> float | None:
    """Position of frame ``index`` along its slice normal (mm), or None without geometry."""
    pos, ori, _ = geometry(ds, index)
    if pos is None or ori is None:
        return None
    return float(np.dot(pos, slice_normal(ori)))


def number_of_frames(ds: Any) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def frame_meta(base: ImageMeta, ds: Any, index: int) -> ImageMeta:
    """``base`` (frame 0's meta) for frame ``index``: per-frame geometry and windows of enhanced objects."""
    if "PerFrameFunctionalGroupsSequence" not in ds:
        return dataclasses.replace(base, index=index)
    _, _, spacing = geometry(ds, index)
    return dataclasses.replace(
        base,
        index=index,
        pixel_spacing=spacing or base.pixel_spacing,
        windows=windows(ds, index),
        slice_position=slice_position(ds, index),
    )


def build_meta(
    ds: Any,
    path: str,
    *,
    index: int = 0,
    n_frames: int = 1,
    original_shape: tuple[int, ...] = (),
    position: float | None = None,
    spacing: tuple[float, float] | None = None,
) -> ImageMeta:
    """The :class:`ImageMeta` of frame ``index`` of dataset ``ds`` read from ``path``.

    ``position``/``spacing`` override what the header says for this frame (mosaic tiles).
    """
    frame = min(index, number_of_frames(ds) - 1)
    _, _, hdr_spacing = geometry(ds, frame)
    if position is None:
        position = slice_position(ds, frame)
    bits = ds.get("BitsStored")
    return ImageMeta(
        source=str(path),
        format="dicom",
        index=index,
        n_frames=n_frames,
        patient_id=_str(ds, "PatientID"),
        study_uid=_str(ds, "StudyInstanceUID"),
        series_uid=_str(ds, "SeriesInstanceUID"),
        sop_uid=_str(ds, "SOPInstanceUID")
        or str(getattr(ds, "file_meta", {}).get("MediaStorageSOPInstanceUID", "") or ""),
        sop_class_uid=sop_class(ds),
        modality=_str(ds, "Modality"),
        body_part=_str(ds, "BodyPartExamined"),
        view_position=_str(ds, "ViewPosition"),
        photometric=_str(ds, "PhotometricInterpretation") or "MONOCHROME2",
        pixel_spacing=spacing or hdr_spacing,
        original_shape=original_shape,
        bits_stored=int(bits) if bits is not None else None,
        windows=windows(ds, frame),
        voi_lut=voi_lut(ds),
        slice_position=position,
        phi={
            "PatientName": _str(ds, "PatientName"),
            "PatientBirthDate": _str(ds, "PatientBirthDate"),
            "AccessionNumber": _str(ds, "AccessionNumber"),
        },
    )
