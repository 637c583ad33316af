"""Saliency regions as DICOM a viewer draws natively: a TID 1500 measurement report and a binary SEG.

:func:`regions_sr` builds a Comprehensive 3D SR (highdicom ``Comprehensive3DSR``) holding a TID 1500
Measurement Report: per region (:class:`~medclass.explain.regions.Region`) two planar ROI groups (TID
1410), one with its outline and one with its bounding box, each a closed SCOORD POLYLINE on the source
image (and frame of a multi-frame source), measured by the region's peak and mean saliency.
:func:`regions_seg` builds a binary Segmentation (highdicom ``Segmentation``) of the thresholded map on the
source's pixel grid, one segment, referencing the source image (and frame).

Both keep the source's StudyInstanceUID (a PACS files them beside the original), get new series and
instance UIDs, and are de-identified like the Secondary Capture (:mod:`medclass.explain.dicom_out`) unless
``include_phi``. Both return the dataset; :func:`~medclass.explain.dicom_out.write_dataset` writes it and
a PACS push can send it as is. The codes for "saliency region" are private (``99MEDCLASS``): no standard
code says "where a classifier's saliency map is high", and a disease code would claim what a map is not.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medclass import __version__
from medclass.errors import DataError, InputError
from medclass.explain.dicom_out import SERIES_NUMBER, deidentify, read_source_header
from medclass.explain.dicom_refs import SourceRef, evidence, source_ref
from medclass.explain.regions import Region
from medclass.ingest.types import ImageMeta

log = logging.getLogger(__name__)

SR_SERIES_NUMBER = SERIES_NUMBER + 2
SEG_SERIES_NUMBER = SERIES_NUMBER + 3
_SCHEME = "99MEDCLASS"


def _code(value: str, meaning: str) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(value, _SCHEME, meaning)


def _source(meta: ImageMeta, source: Dataset | None, include_phi: bool) -> tuple[Dataset, SourceRef]:
    """The source header the outputs copy patient/study from: de-identified unless ``include_phi``."""
    src = read_source_header(meta) if source is None else source
    ref = source_ref(meta, src)  # the same identity, frame and study rules as the Secondary Capture
    if not ref.sop_uid:
        raise InputError("the source has no SOP Instance UID to reference", meta.source)
    out = evidence(src, ref)
    deidentify(out, meta.patient_id, include_phi)
    return out, ref


def _frames(ref: SourceRef) -> list[int] | None:
    return None if ref.frame_number is None else [ref.frame_number]


def _closed(points: Sequence[tuple[float, float]]) -> np.ndarray:
    pts = np.asarray(points, np.float32)
    return np.vstack([pts, pts[:1]])  # a closed POLYLINE repeats its first point


def regions_sr(
    meta: ImageMeta,
    regions: Sequence[Region],
    *,
    method: str,
    explained_class: str,
    threshold: float,
    include_phi: bool = False,
    source: Dataset | None = None,
    series_uid: str | None = None,
    instance_number: int = 1,
) -> Dataset:
    """A Comprehensive 3D SR with a TID 1500 measurement report of ``regions`` on the source image.

    ``meta``: the source image's metadata; ``source`` its header (read from ``meta.source`` when None).
    Raises :class:`InputError` for a non-DICOM source and :class:`DataError` when there is no region.
    """
    import highdicom as hd
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    if not regions:
        raise DataError("no saliency region to report (the map is empty)")
    src, ref = _source(meta, source, include_phi)
    image = hd.sr.SourceImageForRegion.from_source_image(src, referenced_frame_numbers=_frames(ref))
    algorithm = hd.sr.AlgorithmIdentification(name=f"medclass {method} saliency regions", version=__version__)
    unit = CodedConcept("1", "UCUM", "no units")
    groups = []
    for r in regions:
        for kind, outline in (("outline", r.polygon), ("box", r.box_polygon)):
            groups.append(
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(
                        uid=generate_uid(), identifier=f"saliency region {r.rank} {kind}"
                    ),
                    referenced_region=hd.sr.ImageRegion(
                        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                        graphic_data=_closed(outline),
                        source_image=image,
                    ),
                    finding_type=_code("SALREGION", f"Saliency region for {explained_class}"[:64]),
                    algorithm_id=algorithm,
                    measurements=[
                        hd.sr.Measurement(
                            name=_code("SALPEAK", "Peak saliency"),
                            value=r.peak,
                            unit=unit,
                            algorithm_id=algorithm,
                        ),
                        hd.sr.Measurement(
                            name=_code("SALMEAN", "Mean saliency"),
                            value=r.mean,
                            unit=unit,
                            algorithm_id=algorithm,
                        ),
                    ],
                )
            )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(),
            name="medclass",
            model_name=f"{method} saliency regions ≥ {threshold:g} × peak"[:64],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CodedConcept("363679005", "SCT", "Imaging procedure"),
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[src],
        content=report[0],
        series_instance_uid=series_uid or generate_uid(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer="medclass",
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=f"medclass saliency regions ({method}) — not for diagnostic use"[:64],
    )
    deidentify(sr, meta.patient_id, include_phi)
    return sr


def regions_seg(
    meta: ImageMeta,
    mask: np.ndarray,
    *,
    method: str,
    explained_class: str,
    include_phi: bool = False,
    source: Dataset | None = None,
    series_uid: str | None = None,
    instance_number: int = 1,
) -> Dataset:
    """A binary DICOM Segmentation of ``mask`` (H×W bool on the source's pixel grid), one segment.

    For a multi-frame source the mask fills the explained frame; the other frames are empty and omitted.
    Raises :class:`InputError` for a non-DICOM source and :class:`DataError` when the mask does not match
    the source's Rows × Columns or is empty.
    """
    import highdicom as hd
    from highdicom.spatial import get_image_coordinate_system
    from pydicom.sr.codedict import codes

    src, ref = _source(meta, source, include_phi)
    shape = (int(src.get("Rows", 0)), int(src.get("Columns", 0)))
    if mask.shape != shape:
        raise DataError(f"the region mask is {mask.shape[0]}×{mask.shape[1]} but the source image is {shape[0]}×{shape[1]}", meta.source)  # fmt: skip
    if not mask.any():
        raise DataError("the region mask is empty: no segmentation to write", meta.source)
    frames = int(src.get("NumberOfFrames", 1) or 1)
    if frames > 1 and get_image_coordinate_system(src) is None:
        raise InputError("a Segmentation of one frame of a multi-frame image needs the source's patient "
                         "coordinates (highdicom); this one has none: use the SR of the regions instead", meta.source)  # fmt: skip
    pixels = mask.astype(np.uint8)[None]  # 1×H×W
    if frames > 1:
        pixels = np.zeros((frames, *shape), np.uint8)
        pixels[(ref.frame_number or 1) - 1] = mask
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=f"saliency {explained_class}"[:64],
        segmented_property_category=_code("SALIENCY", "Saliency"),
        segmented_property_type=_code("SALREGION", "Salient region (not a lesion)"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=f"medclass {method} saliency",
            version=__version__,
            family=codes.cid7162.ArtificialIntelligence,
        ),
    )
    seg = hd.seg.Segmentation(
        source_images=[src],
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=series_uid or generate_uid(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer="medclass",
        manufacturer_model_name="medclass",
        software_versions=f"medclass {__version__}",
        device_serial_number="0",
        series_description=f"medclass saliency mask ({method}) — not for diagnostic use"[:64],
    )
    if "FrameOfReferenceUID" not in seg and "PatientOrientation" not in seg:
        seg.PatientOrientation = src.get("PatientOrientation") or None  # Type 2C without a patient frame
    deidentify(seg, meta.patient_id, include_phi)
    return seg


def write_region_dicoms(
    meta: ImageMeta,
    regions: Sequence[Region],
    mask: np.ndarray | None,
    stem: Path,
    *,
    method: str,
    explained_class: str,
    threshold: float,
    include_phi: bool = False,
    series: dict[str, str] | None = None,
    instance_number: int = 1,
) -> dict[str, Path]:
    """Write the regions SR (``<stem>_regions_sr.dcm``) and, when ``mask`` is given, the SEG
    (``<stem>_regions_seg.dcm``) of one DICOM source. ``series`` (``{"sr": uid, "seg": uid}``, filled on
    first use) lets the images of one study share their series. Returns ``{"sr": path, "seg": path}`` for
    what was written (nothing for a map without regions). Raises like :func:`regions_sr`/:func:`regions_seg`.
    """
    from medclass.explain.dicom_out import write_dataset

    if not regions:
        return {}
    series = {} if series is None else series
    src = read_source_header(meta)
    common: dict[str, Any] = dict(method=method, explained_class=explained_class, include_phi=include_phi,
                                  source=src, instance_number=instance_number)  # fmt: skip
    sr = regions_sr(
        meta, regions, threshold=threshold, series_uid=series.setdefault("sr", generate_uid()), **common
    )
    out = {"sr": write_dataset(sr, stem.with_name(stem.name + "_regions_sr.dcm"))}
    if mask is not None:
        seg = regions_seg(meta, mask, series_uid=series.setdefault("seg", generate_uid()), **common)
        out["seg"] = write_dataset(seg, stem.with_name(stem.name + "_regions_seg.dcm"))
    return out
