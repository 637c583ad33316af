"""Where manifest records come from: a folder per class, a labels CSV, a DICOM tree joined to labels, or
a MedMNIST ``.npz``.

Each source returns a :class:`Collected`: records (dicts in manifest column names, paths already relative
to the data root, no ``split`` yet, except for ``.npz`` which keeps the official split) and the files it
left out, with the reason.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medclass.errors import ManifestError, UnsafePathError, look_up
from medclass.manifest.table import FINDING_PREFIX, SPLITS

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".nii", ".nii.gz", ".tif", ".tiff", ".bmp")


@dataclass
class Collected:
    """Records for a manifest and the files left out as ``(path, reason)``."""

    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def relative_to_root(file: Path, data_root: Path) -> str:
    """``file`` as a POSIX path relative to ``data_root``; raises :class:`UnsafePathError` if outside it."""
    full = file.resolve()
    root = data_root.resolve()
    if not full.is_relative_to(root):
        raise UnsafePathError(f"is outside the data root {root}; pass a --data-root that contains it", file)
    return full.relative_to(root).as_posix()


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _regex_rule(pattern: str) -> Callable[[Path], str]:
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ManifestError(f"bad patient regex {pattern!r}: {exc}") from exc

    def rule(path: Path) -> str:
        m = rx.search(path.name)
        if not m:
            return ""
        if "patient" in rx.groupindex:
            return m.group("patient") or ""
        return m.group(1) if rx.groups else m.group(0)

    return rule


# --- patient id from a file name: name -> callable table (or a regex) ----------------------------------
PATIENT_RULES: dict[str, Callable[[Path], str]] = {
    "stem": _stem,  # one patient per file
    "parent": lambda p: p.parent.name,  # ROOT/<class>/<patient>/image
    # Kermany chest X-rays: person1004_bacteria_2935 -> person1004, NORMAL2-IM-1152-0001-0002 -> NORMAL2-IM-1152
    "kermany": _regex_rule(r"^(person\d+|(?:NORMAL2-)?IM-\d+)"),
}


def patient_rule(spec: str) -> Callable[[Path], str]:
    """A patient-id rule by name (``stem``, ``parent``, ``kermany``) or ``regex:PATTERN``.

    A regex is searched in the file name; the id is its ``patient`` group, else group 1, else the match.
    Raises :class:`ManifestError` for an unknown name or a bad regex.
    """
    if spec.startswith("regex:"):
        return _regex_rule(spec[len("regex:") :])
    return look_up(PATIENT_RULES, spec, "patient rule", error=ManifestError, also=["regex:PATTERN"])


def _is_image_file(path: Path) -> bool:
    if path.name.startswith("."):
        return False
    if path.name.lower().endswith(IMAGE_SUFFIXES):
        return True
    try:  # DICOM without extension: "DICM" after the 128-byte preamble
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def from_folders(root: Path, data_root: Path, *, patient: str = "stem") -> Collected:
    """One record per image under ``root/<class>/**``; the class is the top folder's name.

    ``patient`` is a rule for :func:`patient_rule`. Files directly in ``root``, hidden files and files that
    are not images are left out. Raises :class:`ManifestError` if ``root`` has no class folder or no image.
    """
    if not root.is_dir():
        raise ManifestError("is not a folder", root)
    rule = patient_rule(patient)
    out = Collected()
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise ManifestError("has no class sub-folders (expected ROOT/<class>/<images>)", root)
    for f in sorted(p for p in root.iterdir() if p.is_file()):
        out.skipped.append((str(f), "not inside a class folder"))
    for cdir in class_dirs:
        for f in sorted(p for p in cdir.rglob("*") if p.is_file()):
            if not _is_image_file(f):
                out.skipped.append((str(f), "not an image file"))
                continue
            pid = rule(f)
            if not pid:
                out.skipped.append((str(f), f"patient rule {patient!r} found no id in the name"))
                continue
            out.records.append(
                {"path": relative_to_root(f, data_root), "patient_id": pid, "label": cdir.name}
            )
    if not out.records:
        raise ManifestError("no image files found in its class folders", root)
    if patient == "stem":
        log.info("patient id = file stem: each file is its own patient (use --patient for other layouts)")
    return out


def _read_labels(csv_path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read labels CSV: {exc}", csv_path) from exc
    reader = csv.DictReader(text.splitlines(keepends=True))
    rows = [(reader.line_num, {k.strip(): (v or "").strip() for k, v in r.items() if k}) for r in reader]
    columns = [c.strip() for c in reader.fieldnames or []]
    if not rows:
        raise ManifestError("labels CSV has no rows", csv_path)
    return columns, rows


def _need(columns: Sequence[str], wanted: Sequence[str], csv_path: Path) -> None:
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise ManifestError(f"line 1: no column(s) {', '.join(missing)}; have {', '.join(columns)}", csv_path)


def _targets(
    row: dict[str, str], line: int, csv_path: Path, label_column: str | None, finding_columns: Sequence[str]
) -> dict[str, Any]:
    if finding_columns:
        out: dict[str, Any] = {}
        for c in finding_columns:
            v = row[c]
            if v in ("1", "1.0", "true", "True"):
                out[FINDING_PREFIX + c] = 1
            elif v in ("0", "0.0", "false", "False"):
                out[FINDING_PREFIX + c] = 0
            else:
                raise ManifestError(f"line {line}: {c} is {v!r}; finding columns must be 0/1", csv_path)
        return out
    assert label_column is not None
    if not row[label_column]:
        raise ManifestError(f"line {line}: empty {label_column!r}", csv_path)
    return {"label": row[label_column]}


def from_labels_csv(
    csv_path: Path,
    data_root: Path,
    *,
    path_column: str = "path",
    label_column: str | None = "label",
    finding_columns: Sequence[str] = (),
    patient_column: str | None = "patient_id",
    study_column: str | None = None,
    keep_columns: Sequence[str] = (),
    images_root: Path | None = None,
) -> Collected:
    """One record per row of a labels CSV whose ``path_column`` names image files.

    Relative paths are taken from ``images_root`` (default: the CSV's folder). Without a patient column
    each file is its own patient. Raises :class:`ManifestError` naming the CSV line for a missing column,
    a missing file, an empty label or a non-0/1 finding value.
    """
    columns, rows = _read_labels(csv_path)
    finding_columns = list(finding_columns)
    wanted = [path_column, *finding_columns, *keep_columns]
    if not finding_columns:
        wanted.append(label_column or "label")
    wanted += [c for c in (patient_column, study_column) if c]
    _need(columns, wanted, csv_path)
    base = images_root if images_root is not None else csv_path.parent
    out = Collected()
    for line, row in rows:
        if not row.get(path_column):
            raise ManifestError(f"line {line}: empty {path_column!r}", csv_path)
        file = Path(row[path_column])
        file = file if file.is_absolute() else base / file
        if not file.is_file():
            raise ManifestError(f"line {line}: image {row[path_column]!r} not found under {base}", csv_path)
        rel = relative_to_root(file, data_root)
        rec: dict[str, Any] = {
            "path": rel,
            "patient_id": row[patient_column] if patient_column else _stem(file),
        }
        if not rec["patient_id"]:
            raise ManifestError(f"line {line}: empty {patient_column!r}", csv_path)
        if study_column:
            rec["study_id"] = row[study_column]
        rec.update(_targets(row, line, csv_path, label_column, finding_columns))
        rec.update({c: row[c] for c in keep_columns})
        out.records.append(rec)
    return out


_DICOM_TAGS = ["PatientID", "StudyInstanceUID", "SOPInstanceUID", "Rows", "NumberOfFrames"]


def read_dicom_keys(path: Path) -> dict[str, str] | None:
    """PatientID, StudyInstanceUID, Rows... of a DICOM file, or None if the file is not DICOM.

    Reads the header only. Raises :class:`ManifestError` for a DICOM file whose header cannot be parsed.
    """
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=_DICOM_TAGS)
    except InvalidDicomError:
        return None
    except Exception as exc:  # pydicom raises many kinds on broken headers
        raise ManifestError(f"unreadable DICOM header: {type(exc).__name__}: {exc}", path) from exc
    return {t: str(ds.get(t, "") or "") for t in _DICOM_TAGS}


def from_dicom_tree(
    root: Path,
    labels_csv: Path,
    data_root: Path,
    *,
    key: str = "patient",
    key_column: str | None = None,
    label_column: str | None = "label",
    finding_columns: Sequence[str] = (),
    keep_columns: Sequence[str] = (),
) -> Collected:
    """One record per DICOM image file under ``root`` (recognised by content), labelled by joining its
    PatientID (``key="patient"``) or StudyInstanceUID (``key="study"``) to ``labels_csv``.

    ``key_column`` defaults to ``patient_id`` / ``study_uid``. Files that are not DICOM, have no image
    (no Rows), have an unreadable header, or whose key has no label are left out and listed in
    ``skipped``. Raises :class:`ManifestError` for a bad labels CSV, a key listed twice, or no labelled file.
    """
    look_up(("patient", "study"), key, "key", error=ManifestError)
    if not root.is_dir():
        raise ManifestError("is not a folder", root)
    key_column = key_column or ("patient_id" if key == "patient" else "study_uid")
    columns, rows = _read_labels(labels_csv)
    finding_columns = list(finding_columns)
    wanted = [key_column, *finding_columns, *keep_columns]
    if not finding_columns:
        wanted.append(label_column or "label")
    _need(columns, wanted, labels_csv)
    table: dict[str, dict[str, Any]] = {}
    first_line: dict[str, int] = {}
    for line, row in rows:
        k = row[key_column]
        if not k:
            raise ManifestError(f"line {line}: empty {key_column!r}", labels_csv)
        if k in table:
            raise ManifestError(
                f"line {line}: {key_column} {k!r} already listed on line {first_line[k]}", labels_csv
            )
        first_line[k] = line
        table[k] = {
            **_targets(row, line, labels_csv, label_column, finding_columns),
            **{c: row[c] for c in keep_columns},
        }
    out = Collected()
    used: set[str] = set()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            tags = read_dicom_keys(f)
        except ManifestError as exc:
            out.skipped.append((str(f), exc.message))
            continue
        if tags is None:
            out.skipped.append((str(f), "not DICOM"))
            continue
        if not tags["Rows"]:
            out.skipped.append((str(f), "DICOM without an image (no Rows)"))
            continue
        k = tags["PatientID"] if key == "patient" else tags["StudyInstanceUID"]
        if k not in table:
            out.skipped.append(
                (str(f), f"no label for {key_column} {k!r}" if k else f"no {key} id in header")
            )
            continue
        used.add(k)
        rec: dict[str, Any] = {"path": relative_to_root(f, data_root), "patient_id": tags["PatientID"] or k}
        if tags["StudyInstanceUID"]:
            rec["study_id"] = tags["StudyInstanceUID"]
        rec.update(table[k])
        out.records.append(rec)
    unused = sorted(set(table) - used)
    if unused:
        log.warning("%s: %d labelled %s(s) have no DICOM file under %s", labels_csv, len(unused), key, root)
    if not out.records:
        raise ManifestError(f"no DICOM file under it matched a label in {labels_csv}", root)
    return out


def from_npz(
    npz_path: Path,
    data_root: Path,
    *,
    label_names: Sequence[str] | None = None,
    id_prefix: str | None = None,
) -> Collected:
    """One record per image of a MedMNIST-layout ``.npz`` (``train_images``/``train_labels``, ``val_…``,
    ``test_…``), keeping the official split.

    ``frame`` k is the k-th image of the ``*_images`` arrays concatenated in the order train, val, test.
    Labels of shape (N, 1) give single-label rows named by ``label_names[value]`` (default the number);
    labels of shape (N, K>1) give multi-label ``finding:`` columns named by ``label_names``. MedMNIST has
    no patient ids: each image gets its own, ``<prefix>-<split>-<index in split>``. Raises
    :class:`ManifestError` for a missing key, mismatched lengths, or a label without a name.
    """
    import numpy as np

    try:
        npz = np.load(npz_path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ManifestError(f"cannot read .npz: {exc}", npz_path) from exc
    rel = relative_to_root(npz_path, data_root)
    prefix = id_prefix or _stem(npz_path)
    out = Collected()
    frame = 0
    with npz:
        present = [s for s in SPLITS if f"{s}_images" in npz.files]
        if not present:
            raise ManifestError(
                f"no train_images/val_images/test_images arrays (has {', '.join(npz.files)})", npz_path
            )
        for split in present:
            if f"{split}_labels" not in npz.files:
                raise ManifestError(f"has {split}_images but no {split}_labels", npz_path)
            n = len(npz[f"{split}_images"])
            labels = np.asarray(npz[f"{split}_labels"]).reshape(n, -1) if n else np.zeros((0, 1), int)
            if len(labels) != n:
                raise ManifestError(f"{split}: {n} images but {len(labels)} labels", npz_path)
            k = labels.shape[1]
            names = list(label_names) if label_names else None
            for i in range(n):
                rec: dict[str, Any] = {
                    "path": rel,
                    "frame": frame,
                    "patient_id": f"{prefix}-{split}-{i:05d}",
                    "split": split,
                }
                if k == 1:
                    v = int(labels[i, 0])
                    if names is not None and not 0 <= v < len(names):
                        raise ManifestError(f"{split} image {i}: label {v} has no name in {names}", npz_path)
                    rec["label"] = names[v] if names is not None else str(v)
                else:
                    if names is None or len(names) != k:
                        raise ManifestError(f"labels have {k} columns: give {k} label names", npz_path)
                    rec.update({FINDING_PREFIX + nm: int(labels[i, j] != 0) for j, nm in enumerate(names)})
                out.records.append(rec)
                frame += 1
    log.debug("%s: %d frames", npz_path, frame)
    return out
