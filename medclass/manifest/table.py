"""The manifest file: one CSV row per image, read into typed rows and written back atomically.

Columns (see ``data_manifests/README.md``): ``path`` (POSIX, relative to a data root), ``patient_id``,
``split`` (``train``/``val``/``test``), and either ``label`` (single-label) or one 0/1 column per finding
named ``finding:<name>`` (multi-label); optional ``frame`` (int), ``study_id``, ``image_id`` (default
``path`` or ``path#frame``) and any other columns (kept in :attr:`ManifestRow.extra`).

The data root that relative paths are resolved against is, in this order: the ``data_root`` argument,
the ``MEDCLASS_DATA_ROOT`` environment variable, the root recorded when the manifest was built (its
``.meta.json``, :mod:`medclass.manifest.meta`), the folder that holds the manifest.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

from medclass.errors import ManifestError, UnsafePathError, look_up
from medclass.fileio import restore_cell, write_csv
from medclass.manifest.meta import read_meta, recorded_root
from medclass.names import FINDING_PREFIX

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
REQUIRED_COLUMNS: tuple[str, ...] = ("path", "patient_id", "split")
KNOWN_COLUMNS: tuple[str, ...] = ("path", "frame", "image_id", "patient_id", "study_id", "split", "label")
DATA_ROOT_ENV = "MEDCLASS_DATA_ROOT"

Task = Literal["multiclass", "multilabel"]


@dataclass(frozen=True)
class ManifestRow:
    """One image of a manifest.

    ``line`` is the row's line number in the CSV file (the header is line 1). ``label`` is the class
    name (single-label manifests, else None); ``findings`` maps each finding name to 0/1 (multi-label
    manifests, else empty). ``extra`` holds every other column as text.
    """

    line: int
    path: str
    patient_id: str
    split: str
    label: str | None = None
    findings: dict[str, int] = field(default_factory=dict)
    frame: int | None = None
    study_id: str = ""
    image_id: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int | None]:
        """``(path, frame)``: what identifies the image inside the data root."""
        return (self.path, self.frame)


def default_image_id(path: str, frame: int | None) -> str:
    """``path`` for a whole file, ``path#frame`` for one frame of it."""
    return path if frame is None else f"{path}#{frame}"


@dataclass
class Manifest:
    """A loaded manifest.

    ``classes`` are the class names (single-label: sorted distinct labels unless given to
    :func:`load_manifest`; multi-label: the finding names in column order); ``findings`` is the same list
    for multi-label manifests and empty otherwise. ``sha256`` is the hash of the file's bytes, recorded with
    every run. ``data_root`` is where relative paths point (already resolved from argument / env / folder).
    ``allow_outside_root`` is what :meth:`resolve` does by default with a path that leaves the data root
    (False: refuse it). ``root_source`` says where ``data_root`` came from; ``recorded_root`` and
    ``positive_class`` are what the manifest's ``.meta.json`` recorded at build time (None without one).
    """

    path: Path
    rows: list[ManifestRow]
    classes: list[str]
    task: Task
    findings: list[str]
    sha256: str
    data_root: Path
    columns: list[str]
    allow_outside_root: bool = False
    root_source: str = "the manifest's folder"  # where data_root came from (for messages)
    recorded_root: Path | None = None  # the root recorded when the manifest was built
    positive_class: str | None = None  # recorded at build time (two-class single-label manifests)

    def __len__(self) -> int:
        return len(self.rows)

    def split(self, name: str) -> list[ManifestRow]:
        """The rows of split ``name``; raises :class:`ManifestError` for a name other than train/val/test."""
        look_up(SPLITS, name, "split", error=ManifestError, path=self.path)
        return [r for r in self.rows if r.split == name]

    def target(self, row: ManifestRow) -> int | list[int]:
        """The training target of ``row``: class index (single-label) or 0/1 list in ``classes`` order."""
        if self.task == "multilabel":
            return [row.findings[f] for f in self.findings]
        assert row.label is not None
        return self.classes.index(row.label)

    def resolve(self, row: ManifestRow, *, allow_outside_root: bool | None = None) -> Path:
        """The file of ``row`` under :attr:`data_root`.

        Raises :class:`UnsafePathError` (naming the manifest line) for an absolute path, a ``..`` component
        or a symlink that resolves outside the data root, unless ``allow_outside_root`` is set (None: the
        manifest's own :attr:`allow_outside_root`).
        """
        if allow_outside_root is None:
            allow_outside_root = self.allow_outside_root
        return resolve_path(
            row.path,
            self.data_root,
            where=f"line {row.line}",
            manifest=self.path,
            allow_outside_root=allow_outside_root,
        )


def resolve_path(
    relpath: str,
    data_root: Path,
    *,
    where: str = "",
    manifest: Path | None = None,
    allow_outside_root: bool = False,
) -> Path:
    """Join ``relpath`` (POSIX) to ``data_root``, refusing anything that leaves the root.

    Returns the joined path (symlinks not resolved). Raises :class:`UnsafePathError`.
    """
    prefix = f"{where}: " if where else ""
    posix = PurePosixPath(relpath)
    is_abs = posix.is_absolute() or PureWindowsPath(relpath).is_absolute() or "\\" in relpath
    if allow_outside_root:
        return Path(relpath) if is_abs else data_root / posix
    if is_abs:
        raise UnsafePathError(
            f"{prefix}path {relpath!r} is absolute; write it relative to the data root", manifest
        )
    if ".." in posix.parts:
        raise UnsafePathError(f"{prefix}path {relpath!r} contains '..' and escapes the data root", manifest)
    full = data_root / posix
    root_real = data_root.resolve()
    if not full.resolve().is_relative_to(root_real):
        raise UnsafePathError(
            f"{prefix}path {relpath!r} is a link that resolves outside the data root {root_real}", manifest
        )
    return full


def resolve_data_root(
    manifest_path: Path, data_root: str | os.PathLike[str] | None, recorded: Path | None = None
) -> Path:
    """Explicit ``data_root`` > ``$MEDCLASS_DATA_ROOT`` > the ``recorded`` root > the manifest's own folder."""
    return data_root_and_source(manifest_path, data_root, recorded)[0]


def data_root_and_source(
    manifest_path: Path, data_root: str | os.PathLike[str] | None, recorded: Path | None = None
) -> tuple[Path, str]:
    """:func:`resolve_data_root` and where it came from, in words (for messages)."""
    if data_root is not None:
        return Path(data_root), "--data-root"
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env), f"${DATA_ROOT_ENV}"
    if recorded is not None:
        return recorded, "recorded when the manifest was built"
    return manifest_path.resolve().parent, "the manifest's folder"


def load_manifest(
    path: str | os.PathLike[str],
    data_root: str | os.PathLike[str] | None = None,
    *,
    classes: Sequence[str] | None = None,
    allow_outside_root: bool = False,
) -> Manifest:
    """Read and validate a manifest CSV.

    ``classes`` (single-label only) fixes the class list and order; labels outside it are errors.
    ``allow_outside_root`` becomes :attr:`Manifest.allow_outside_root`.
    Cells that :func:`~medclass.fileio.safe_cell` neutralised when the
    file was written (``'=x``, ``'+ve``) read back as written (``=x``, ``+ve``).
    Returns a :class:`Manifest`. Raises :class:`ManifestError` naming the file and line for an unreadable
    or empty file, a missing column, a split other than train/val/test, an empty path/patient/label, a
    finding value other than 0/1, a bad frame number, or an unknown label. Paths are checked against the
    data root only by :meth:`Manifest.resolve`.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"cannot read manifest: {exc.strerror or exc}", path) from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"not UTF-8 text (byte {exc.start})", path) from exc
    reader = csv.DictReader(text.splitlines(keepends=True))
    columns = [restore_cell(c.strip()) for c in (reader.fieldnames or [])]
    if not columns:
        raise ManifestError("empty manifest (no header line)", path)
    if len(set(columns)) != len(columns):
        dup = sorted({c for c in columns if columns.count(c) > 1})
        raise ManifestError(f"line 1: duplicate column(s) {', '.join(dup)}", path)
    reader.fieldnames = columns
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ManifestError(
            f"line 1: missing column(s) {', '.join(missing)}; have {', '.join(columns)}", path
        )
    findings = [c[len(FINDING_PREFIX) :] for c in columns if c.startswith(FINDING_PREFIX)]
    if "label" in columns and findings:
        raise ManifestError("line 1: has both a 'label' column and 'finding:' columns; use one", path)
    if "label" not in columns and not findings:
        raise ManifestError("line 1: needs a 'label' column or 'finding:<name>' columns", path)
    if any(not f for f in findings):
        raise ManifestError("line 1: a 'finding:' column has no name", path)
    task: Task = "multilabel" if findings else "multiclass"
    if classes is not None and task == "multilabel":
        raise ManifestError("classes can only be given for a single-label manifest", path)
    extra_cols = [c for c in columns if c not in KNOWN_COLUMNS and not c.startswith(FINDING_PREFIX)]

    rows: list[ManifestRow] = []
    for raw in reader:
        line = reader.line_num
        if None in raw:
            raise ManifestError(f"line {line}: more cells than columns", path)
        if all(not (v or "").strip() for v in raw.values()):
            continue  # blank line
        rows.append(_parse_row(raw, line, path, findings, extra_cols))
    if not rows:
        raise ManifestError("empty manifest (header only, no image rows)", path)

    if task == "multiclass":
        labels = sorted({r.label for r in rows if r.label is not None})
        if classes is not None:
            known = set(classes)
            for r in rows:
                if r.label not in known:
                    raise ManifestError(
                        f"line {r.line}: unknown label {r.label!r}; expected one of {', '.join(classes)}",
                        path,
                    )
            class_list = list(classes)
        else:
            class_list = labels
    else:
        class_list = list(findings)
    meta = read_meta(path)
    recorded = recorded_root(path, meta)
    root, source = data_root_and_source(path, data_root, recorded)
    positive = meta.get("positive_class")
    if not (isinstance(positive, str) and positive in class_list and task == "multiclass"):
        positive = None
    return Manifest(
        path=path,
        rows=rows,
        classes=class_list,
        task=task,
        findings=list(findings),
        sha256=hashlib.sha256(data).hexdigest(),
        data_root=root,
        columns=columns,
        allow_outside_root=allow_outside_root,
        root_source=source,
        recorded_root=recorded,
        positive_class=positive,
    )


def _parse_row(
    raw: Mapping[str, str | None], line: int, path: Path, findings: list[str], extra_cols: list[str]
) -> ManifestRow:
    def cell(name: str) -> str:
        return restore_cell((raw.get(name) or "").strip())

    for col in ("path", "patient_id", "split"):
        if not cell(col):
            raise ManifestError(f"line {line}: empty {col!r}", path)
    split = cell("split")
    if split not in SPLITS:
        raise ManifestError(f"line {line}: split {split!r} is not one of {', '.join(SPLITS)}", path)
    frame: int | None = None
    if cell("frame"):
        try:
            frame = int(cell("frame"))
        except ValueError:
            raise ManifestError(f"line {line}: frame {cell('frame')!r} is not an integer", path) from None
        if frame < 0:
            raise ManifestError(f"line {line}: frame {frame} is negative", path)
    label: str | None = None
    values: dict[str, int] = {}
    if findings:
        for f in findings:
            v = cell(FINDING_PREFIX + f)
            if v not in ("0", "1"):
                raise ManifestError(f"line {line}: finding:{f} is {v!r}; must be 0 or 1", path)
            values[f] = int(v)
    else:
        label = cell("label")
        if not label:
            raise ManifestError(f"line {line}: empty 'label'", path)
    return ManifestRow(
        line=line,
        path=cell("path"),
        patient_id=cell("patient_id"),
        split=split,
        label=label,
        findings=values,
        frame=frame,
        study_id=cell("study_id"),
        image_id=cell("image_id") or default_image_id(cell("path"), frame),
        extra={c: cell(c) for c in extra_cols},
    )


def manifest_columns(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """The column order used when writing: known columns first, findings, then extras (first-seen order)."""
    seen: list[str] = []
    for rec in records:
        for k in rec:
            if k not in seen:
                seen.append(k)
    head = [c for c in ("path", "frame", "image_id", "patient_id", "study_id", "split", "label") if c in seen]
    finding_cols = [c for c in seen if c.startswith(FINDING_PREFIX)]
    rest = [c for c in seen if c not in head and c not in finding_cols]
    return head + finding_cols + rest


def write_manifest(path: str | os.PathLike[str], records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Write ``records`` (dicts in manifest column names) atomically as a manifest CSV.

    ``None`` cells are written empty; cells that look like spreadsheet formulas are neutralised.
    Returns the column list written. Raises :class:`ManifestError` for no records or a record without
    ``path``, ``patient_id`` or ``split``.
    """
    if not records:
        raise ManifestError("nothing to write: no image rows", path)
    for i, rec in enumerate(records):
        for col in REQUIRED_COLUMNS:
            if rec.get(col) in (None, ""):
                raise ManifestError(f"record {i} has no {col!r}", path)
    columns = manifest_columns(records)
    rows = [{k: ("" if v is None else v) for k, v in rec.items()} for rec in records]
    write_csv(path, rows, columns)
    log.info("wrote %d rows to %s", len(rows), path)
    return columns


def row_to_record(row: ManifestRow) -> dict[str, Any]:
    """A :class:`ManifestRow` as a dict in manifest column names (for writing it back)."""
    rec: dict[str, Any] = {"path": row.path}
    if row.frame is not None:
        rec["frame"] = row.frame
    if row.image_id and row.image_id != default_image_id(row.path, row.frame):
        rec["image_id"] = row.image_id
    rec["patient_id"] = row.patient_id
    if row.study_id:
        rec["study_id"] = row.study_id
    rec["split"] = row.split
    if row.label is not None:
        rec["label"] = row.label
    for f, v in row.findings.items():
        rec[FINDING_PREFIX + f] = v
    rec.update(row.extra)
    return rec
