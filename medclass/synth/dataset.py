"""Generating a whole data set: patients, visits, images, labels, and the truth files.

Three independent random streams spawned from the seed: labels (which patients are positive), headers
(structure, sizes, encodings, dates) and pixels (anatomy, lesions, noise). Image files are written plainly;
``labels.csv`` and ``lesions.json`` are written last and atomically, so their presence marks a complete set.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.uid import generate_uid

from medclass.errors import ConfigError, look_up
from medclass.fileio import atomic_write_text, write_csv
from medclass.synth.dicom import TRANSFER_SYNTAXES, ImageIds, build_dataset, draw_encoding, encode, to_stored
from medclass.synth.phantom import Anatomy, Lesion, jitter_anatomy, random_anatomy, render_phantom

logger = logging.getLogger(__name__)

LABELS = ("normal", "opacity")
CSV_FIELDS = ["path", "patient_id", "study_id", "label", "lesion_x", "lesion_y", "lesion_r", "sex", "view"]


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
    if not syntaxes:
        raise ConfigError(f"no transfer syntax given; valid: {', '.join(TRANSFER_SYNTAXES)}")
    for syntax in syntaxes:
        look_up(TRANSFER_SYNTAXES, syntax, "transfer syntax")
    bad = [k for k in phi if tag_for_keyword(k) is None]
    if bad:
        raise ConfigError(f"phi_markers: {bad} are not DICOM keywords (e.g. PatientName, PatientID)")


def _patient_ids(
    p: int, n_img: int, seed: int, phi: dict[str, str], rng: np.random.Generator
) -> list[ImageIds]:
    """Identifiers of patient ``p``'s images: one or two visits (studies), one series per image."""
    n_studies = int(rng.integers(1, 3)) if n_img > 1 else 1
    sex, age = ("F", "M")[int(rng.integers(2))], int(rng.integers(18, 91))
    first = _dt.date(2015, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 3300)))
    later = first + _dt.timedelta(days=int(rng.integers(20, 400)))
    birth = first - _dt.timedelta(days=365 * age + int(rng.integers(1, 360)))
    out = []
    for i in range(n_img):
        study = i * n_studies // n_img
        ent = [str(seed), str(p), str(study)]
        out.append(ImageIds(
            patient_id=f"{phi.get('PatientID', 'SYN')}-{p + 1:04d}",
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
        ))  # fmt: skip
    return out


def _generate(out_dir: str | Path, fmt: str, n_patients: int, images_per_patient: tuple[int, int],
              positive_fraction: float, seed: int, sizes: Sequence[tuple[int, int]],
              phi_markers: dict[str, str] | None, transfer_syntaxes: Sequence[str],
              compressed_fraction: float, lesion_contrast: float | None) -> SynthDataset:  # fmt: skip
    phi = dict(phi_markers or {})
    _check_args(n_patients, images_per_patient, positive_fraction, sizes, transfer_syntaxes, phi)
    t0 = time.perf_counter()
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = root / "lesions.json", root / "labels.csv"
    for marker in (csv_path, json_path):  # regenerating: an old completion marker must not outlive this run
        marker.unlink(missing_ok=True)
    label_rng, hdr_rng, pix_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    positive = np.zeros(n_patients, bool)
    positive[label_rng.permutation(n_patients)[: round(n_patients * positive_fraction)]] = True
    extra = {k: v for k, v in phi.items() if k not in ("PatientName", "PatientBirthDate", *_PHI_SUFFIXED)}
    records: list[SynthRecord] = []
    for p in range(n_patients):
        n_img = int(hdr_rng.integers(images_per_patient[0], images_per_patient[1] + 1))
        anatomy = random_anatomy(pix_rng)
        for ids in _patient_ids(p, n_img, seed, phi, hdr_rng):
            enc = draw_encoding(hdr_rng, sizes, transfer_syntaxes, compressed_fraction)
            if fmt == "png":
                enc = replace(enc, photometric="MONOCHROME2", bits_allocated=8, bits_stored=8, slope=1.0,
                              intercept=0.0, lo_frac=0.0, hi_frac=1.0, border=None, syntax="png", ext=".png",
                              modality="")  # fmt: skip
            ph = render_phantom((enc.rows, enc.cols), jitter_anatomy(anatomy, pix_rng), pix_rng,
                                lesion=bool(positive[p]), lesion_contrast=lesion_contrast)  # fmt: skip
            stored, center, width, pad = to_stored(ph.image, enc)
            if fmt == "png":
                data = _png_bytes(stored)
            else:
                data = encode(build_dataset(stored, enc, ids, center, width, pad, extra), stored, enc.syntax)
            rel = f"p{p + 1:04d}/s{ids.study_no}/i{ids.instance}{enc.ext}"
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)  # plain write: labels.csv, written last and atomically, marks completion
            records.append(SynthRecord(
                rel, ids.patient_id, ids.study_uid, ids.series_uid, ids.sop_uid, LABELS[int(positive[p])],
                ph.lesion, enc.rows, enc.cols, enc.photometric, enc.bits_stored, enc.bits_allocated, enc.syntax,
                enc.modality, enc.view, ids.sex, enc.slope, enc.intercept, center, width, pad, ph.anatomy))  # fmt: skip
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
