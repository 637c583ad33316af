"""What ingestion hands to the rest of the pipeline: float32 pixels plus the metadata that matter."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Window:
    """A VOI window: ``center``/``width`` in modality units, and where it came from.

    ``source`` is one of ``header`` (Window Center/Width), ``voi-lut`` (VOI LUT Sequence, see
    :class:`VoiLut`), ``preset:<name>`` (a named CT window), ``percentile`` (robust normalisation),
    ``range`` (full value range, e.g. an 8-bit PNG). ``function`` is the DICOM VOI LUT Function
    (``LINEAR``, ``LINEAR_EXACT``, ``SIGMOID``).
    """

    center: float
    width: float
    source: str
    function: str = "LINEAR"
    explanation: str = ""


@dataclass(frozen=True)
class VoiLut:
    """A VOI LUT Sequence item: output = table[clip(x - first_mapped, 0, len-1)]."""

    first_mapped: int
    table: np.ndarray  # (n,) the LUT Data, unsigned
    bits: int  # LUT Descriptor's third value: the output range is 0 .. 2**bits - 1
    explanation: str = ""


@dataclass(frozen=True)
class ImageMeta:
    """Metadata of one 2D image (one frame of a multi-frame file, or one slice of a volume).

    ``source`` is the path the pixels came from (for a DICOM series: the slice's own file), ``index`` the
    frame/slice index within the source (0 for a plain 2D image) and ``n_frames`` how many the source has.
    ``original_shape`` is the shape of the whole source as stored (frames, rows, cols[, samples]).
    Patient-identifying values stay inside medclass: what leaves it goes through :mod:`medclass.phi`.
    """

    source: str
    format: str  # "dicom", "nifti", "png", "jpeg", "npz"
    index: int = 0
    n_frames: int = 1
    patient_id: str = ""
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    sop_class_uid: str = ""
    modality: str = ""
    body_part: str = ""
    view_position: str = ""
    photometric: str = "MONOCHROME2"  # as stored; RGB-family images are converted to RGB on read
    pixel_spacing: tuple[float, float] | None = None  # (row, col) mm
    original_shape: tuple[int, ...] = ()
    bits_stored: int | None = None
    windows: tuple[Window, ...] = ()  # from the header, first = default
    voi_lut: VoiLut | None = None
    slice_position: float | None = None  # mm along the slice normal, for volumes
    # < 1 when the pixels were decoded at reduced resolution (a reader's ``min_size`` hint): pixels are
    # ``original_shape`` × this, pixel_spacing is that of the decoded pixels.
    decoded_scale: float = 1.0
    # Identifying values kept only for --include-phi and DICOM outputs that reference the source.
    phi: dict[str, str] = field(default_factory=dict)


@dataclass
class Image:
    """One 2D image ready for windowing.

    ``pixels``: ``H×W`` float32 after the modality LUT (rescale slope/intercept), sign and BitsStored
    handled, *not* windowed and *not* inverted (MONOCHROME1 inversion is a display step in
    :mod:`medclass.preprocess`); or ``H×W×3`` float32 RGB in 0..255 for colour images.
    ``mask``: ``H×W`` bool, False where the pixel is padding (PixelPaddingValue) or non-finite; None when
    every pixel is real.
    """

    pixels: np.ndarray
    meta: ImageMeta
    mask: np.ndarray | None = None

    @property
    def is_color(self) -> bool:
        return self.pixels.ndim == 3


@dataclass(frozen=True)
class Source:
    """One thing :func:`medclass.ingest.load` can turn into images, found by :func:`~medclass.ingest.discover`.

    ``format`` is ``dicom`` (one file, maybe multi-frame), ``dicom-series`` (single-frame slices of one
    series, ``paths`` sorted by position along the slice normal, ``positions`` in mm when known),
    ``nifti``, ``png``, ``jpeg``, ``npz``, or ``unknown`` (loading raises the error that says why).
    """

    paths: tuple[str, ...]
    format: str
    series_uid: str = ""
    positions: tuple[float, ...] = ()

    @property
    def path(self) -> str:
        """The first (or only) file."""
        return self.paths[0]

    def __str__(self) -> str:
        if len(self.paths) == 1:
            return self.paths[0]
        return f"{self.paths[0]} (+{len(self.paths) - 1} slices of series {self.series_uid})"
