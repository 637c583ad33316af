"""Single-frame DICOM slices of one series → one volume, sorted along the slice normal.

Slices are grouped by (SeriesInstanceUID — or, for files an anonymiser stripped of it, folder + Frame
of Reference UID + Series Number + Series Description + Modality —, SOP class, Rows×Columns, ImageOrientationPatient rounded to
1e-3), so a localizer or a reformat that shares the series UID does not end up inside the stack. Within
a group, slices are sorted by ImagePositionPatient projected on the slice normal (row direction ×
column direction of ImageOrientationPatient); when any slice lacks the geometry, by InstanceNumber;
ties by InstanceNumber, then path.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from medclass.ingest import dicom_meta as dm
from medclass.ingest.base import Frames
from medclass.ingest.dicom import DicomReader, dcmread
from medclass.ingest.types import Image, ImageMeta, Source


@dataclass(frozen=True)
class SliceHeader:
    """The header fields that decide grouping and order of one DICOM file."""

    path: str
    series_uid: str
    sop_class_uid: str
    rows: int
    cols: int
    n_frames: int
    mosaic: bool
    orientation: tuple[float, ...] | None
    position: tuple[float, ...] | None
    instance: int | None
    fallback_series: str = ""  # folder + series number/description, for files stripped of the UID

    @property
    def stackable(self) -> bool:
        """A single-frame CT/MR/PET/NM slice (candidate for a volume)."""
        return self.sop_class_uid in dm.VOLUME_SOP_CLASSES and self.n_frames == 1 and not self.mosaic

    def group_key(self) -> tuple[Any, ...]:
        ori = tuple(round(v, 3) for v in self.orientation) if self.orientation else None
        return (self.series_uid or self.fallback_series, self.sop_class_uid, self.rows, self.cols, ori)


def slice_header(path: str) -> SliceHeader:
    """Read the grouping fields of ``path`` (header only). Raises what :func:`dcmread` raises."""
    ds = dcmread(path, header_only=True)

    def floats(keyword: str, n: int) -> tuple[float, ...] | None:
        try:
            v = [float(x) for x in (ds.get(keyword) or [])]
        except (TypeError, ValueError):
            return None
        return tuple(v) if len(v) == n else None

    try:
        instance = int(ds.get("InstanceNumber")) if ds.get("InstanceNumber") not in (None, "") else None
    except (TypeError, ValueError):
        instance = None
    try:
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    except (TypeError, ValueError):
        rows = cols = 0
    return SliceHeader(
        path=path,
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        sop_class_uid=dm.sop_class(ds),
        rows=rows,
        cols=cols,
        n_frames=dm.number_of_frames(ds),
        mosaic="MOSAIC" in [str(v).upper() for v in (ds.get("ImageType") or [])],
        orientation=floats("ImageOrientationPatient", 6),
        position=floats("ImagePositionPatient", 3),
        instance=instance,
        fallback_series="|".join(
            str(v)
            for v in (
                os.path.dirname(os.path.abspath(path)),
                ds.get("FrameOfReferenceUID", ""),
                ds.get("SeriesNumber", ""),
                ds.get("SeriesDescription", ""),
                ds.get("Modality", ""),
            )
        ),
    )


def sort_slices(headers: list[SliceHeader]) -> tuple[list[SliceHeader], list[float]]:
    """``headers`` in volume order and their positions along the normal (empty when unknown)."""

    def inst(h: SliceHeader) -> float:
        return float(h.instance) if h.instance is not None else float("inf")

    if all(h.position is not None and h.orientation is not None for h in headers):
        normal = dm.slice_normal(np.asarray(headers[0].orientation, dtype=float))
        pos = {h.path: float(np.dot(np.asarray(h.position), normal)) for h in headers}
        ordered = sorted(headers, key=lambda h: (pos[h.path], inst(h), h.path))
        return ordered, [pos[h.path] for h in ordered]
    return sorted(headers, key=lambda h: (inst(h), h.path)), []


def group_series(headers: list[SliceHeader]) -> list[Source]:
    """Sources for DICOM headers: stackable slices of one group become one ``dicom-series`` source.

    Sources come in the order of their first file in ``headers``.
    """
    groups: dict[tuple[Any, ...], list[SliceHeader]] = {}
    order: list[tuple[str, Any]] = []
    for h in headers:
        if h.stackable:
            key = h.group_key()
            if key not in groups:
                groups[key] = []
                order.append(("group", key))
            groups[key].append(h)
        else:
            order.append(("file", h.path))
    out: list[Source] = []
    for kind, item in order:
        if kind == "file":
            out.append(Source(paths=(item,), format="dicom"))
            continue
        members = groups[item]
        if len(members) == 1:
            out.append(Source(paths=(members[0].path,), format="dicom", series_uid=members[0].series_uid))
            continue
        ordered, positions = sort_slices(members)
        out.append(
            Source(
                paths=tuple(h.path for h in ordered),
                format="dicom-series",
                series_uid=members[0].series_uid,
                positions=tuple(positions),
            )
        )
    return out


class SeriesFrames(Frames):
    """Frame ``i`` is the slice file ``source.paths[i]``; its meta says index ``i`` of ``n``."""

    def __init__(self, source: Source, *, limit: int | None = None) -> None:
        super().__init__(source.paths[0], len(source.paths))
        self.source = source
        self.limit = limit
        self._reader = DicomReader()
        self._shape: tuple[int, ...] | None = None

    def _fix(self, meta: ImageMeta, index: int) -> ImageMeta:
        if self._shape is None:
            self._shape = (self.n, *meta.original_shape[1:])
        pos = self.source.positions[index] if self.source.positions else meta.slice_position
        return dataclasses.replace(
            meta, index=index, n_frames=self.n, original_shape=self._shape, slice_position=pos
        )

    def meta(self, index: int) -> ImageMeta:
        i = self._check(index)
        return self._fix(self._reader.read_meta(self.source.paths[i], limit=self.limit), i)

    def _get(self, index: int) -> Image:
        image = self._reader.open(self.source.paths[index], limit=self.limit)[0]
        image.meta = self._fix(image.meta, index)
        return image
