"""Checking a loaded manifest against its data root: every problem found, each naming its lines.

Problems: a path that escapes the data root, a missing file, an unknown label (when classes are given),
the same image (path + frame) listed twice, a frame past the end of a ``.npz``, a patient (or study) in two splits, and identical file content
(sha256) in two splits. Content is hashed only for whole-file rows (no ``frame``): the frames of one
multi-frame file may legitimately sit in different splits.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medclass.errors import UnsafePathError
from medclass.manifest.table import SPLITS, Manifest, ManifestRow

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
MIN_CLASS_IMAGES = 5  # a class with fewer images in the whole manifest is probably a typo'd label
MIN_AUC_CASES = 10  # fewer positives (or negatives) of a class in val/test: its AUC is unreliable


@dataclass(frozen=True)
class Problem:
    """One problem: its ``kind`` (``unsafe-path``, ``missing-file``, ``unknown-label``, ``duplicate-image``,
    ``frame-out-of-range``, ``unreadable-file``, ``patient-in-two-splits``, ``study-in-two-splits``,
    ``same-content-in-two-splits``), the manifest lines
    involved and a one-line message."""

    kind: str
    lines: tuple[int, ...]
    message: str

    def __str__(self) -> str:
        where = "line" if len(self.lines) == 1 else "lines"
        return f"{where} {', '.join(map(str, self.lines))}: {self.message}"


@dataclass
class CheckReport:
    """What :func:`check_manifest` found. ``ok`` is True when there is no problem."""

    manifest: Manifest
    problems: list[Problem] = field(default_factory=list)
    files_hashed: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class (or positives per finding) per split: ``{class: {split: n}}``."""
        out: dict[str, dict[str, int]] = {c: dict.fromkeys(SPLITS, 0) for c in self.manifest.classes}
        for r in self.manifest.rows:
            if r.label is not None:
                out.setdefault(r.label, dict.fromkeys(SPLITS, 0))[r.split] += 1
            for f, v in r.findings.items():
                out[f][r.split] += v
        return out

    def patients(self) -> dict[str, int]:
        """Distinct patients per split."""
        return {s: len({r.patient_id for r in self.manifest.rows if r.split == s}) for s in SPLITS}


def data_warnings(
    manifest: Manifest, *, min_images: int = MIN_CLASS_IMAGES, min_cases: int = MIN_AUC_CASES
) -> list[str]:
    """Problems in the data that are not errors: a class with fewer than ``min_images`` images (a typo'd
    label such as "nromal" silently makes another class), a class absent from the training split, and
    val/test splits with fewer than ``min_cases`` positives or negatives of a class (no trustworthy AUC).
    Returns one line per warning (empty when the data looks fine)."""
    out: list[str] = []
    counts: dict[str, dict[str, int]] = {c: dict.fromkeys(SPLITS, 0) for c in manifest.classes}
    lines: dict[str, list[int]] = defaultdict(list)
    totals = dict.fromkeys(SPLITS, 0)
    for r in manifest.rows:
        totals[r.split] += 1
        if r.label is not None:
            counts[r.label][r.split] += 1
            lines[r.label].append(r.line)
        for f, v in r.findings.items():
            counts[f][r.split] += v
            if v:
                lines[f].append(r.line)
    what = "images" if manifest.task == "multiclass" else "positive images"
    for c, by_split in counts.items():
        n = sum(by_split.values())
        if n < min_images:
            shown = ", ".join(map(str, lines[c][:5])) + (" ..." if len(lines[c]) > 5 else "")
            out.append(
                f"class {c!r} has only {n} {what} (line {shown}): a typo'd label? "
                f"classes: {', '.join(manifest.classes)}"
                if n
                else f"class {c!r} has no {what}"
            )
        if totals["train"] and not by_split["train"]:
            out.append(f"class {c!r} has no {what} in the train split")
    binary = manifest.task == "multiclass" and len(manifest.classes) == 2
    reported = [manifest.positive_class or manifest.classes[1]] if binary else list(manifest.classes)
    for split in ("val", "test"):
        if not totals[split]:
            continue
        for c in reported:
            pos = counts[c][split]
            neg = totals[split] - pos
            if pos < min_cases or neg < min_cases:
                out.append(
                    f"split {split!r} has {pos} {c!r} and {neg} other images: fewer than {min_cases} of one "
                    f"kind, so the {c!r} AUC on it will be unreliable"
                )
    return out


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check_manifest(
    manifest: Manifest,
    *,
    classes: Sequence[str] | None = None,
    hash_content: bool = True,
    group: str = "patient",
    allow_outside_root: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """Look for every problem in ``manifest`` (see the module docstring); returns a :class:`CheckReport`.

    ``classes`` (single-label) are the allowed labels. ``hash_content`` compares file contents across
    splits (each file is read once, streamed). ``group="study"`` (a manifest split by study) does not
    report a patient whose studies sit in different splits. ``allow_outside_root`` (None: the manifest's
    own setting) lets paths leave the data root instead of reporting them. ``progress(done, total)`` is
    called while hashing.
    Raises nothing for problems in the data; they are all in the report.
    """
    report = CheckReport(manifest)
    problems = report.problems
    existing: dict[int, Path] = {}
    for row in manifest.rows:
        try:
            file = manifest.resolve(row, allow_outside_root=allow_outside_root)
        except UnsafePathError as exc:
            problems.append(Problem("unsafe-path", (row.line,), exc.message.split(": ", 1)[-1]))
            continue
        if not file.is_file():
            problems.append(
                Problem("missing-file", (row.line,), f"file {row.path!r} not found in {manifest.data_root}")
            )
            continue
        existing[row.line] = file

    if classes is not None and manifest.task == "multiclass":
        known = set(classes)
        bad: dict[str, list[int]] = defaultdict(list)
        for row in manifest.rows:
            if row.label not in known:
                bad[str(row.label)].append(row.line)
        for label, lines in sorted(bad.items()):
            problems.append(
                Problem(
                    "unknown-label",
                    tuple(lines),
                    f"unknown label {label!r}; expected one of {', '.join(classes)}",
                )
            )

    by_key: dict[tuple[str, int | None], list[ManifestRow]] = defaultdict(list)
    for row in manifest.rows:
        by_key[row.key].append(row)
    for (path, frame), rows in by_key.items():
        if len(rows) > 1:
            splits = sorted({r.split for r in rows}, key=SPLITS.index)
            what = path if frame is None else f"{path} frame {frame}"
            where = f"in splits {', '.join(splits)}" if len(splits) > 1 else f"twice in {splits[0]}"
            problems.append(
                Problem("duplicate-image", tuple(r.line for r in rows), f"image {what} listed {where}")
            )

    problems += _npz_frames(manifest.rows, existing)
    if group not in ("patient", "study"):
        raise ValueError(f"group must be 'patient' or 'study', not {group!r}")
    if group == "patient":  # a manifest split by study may put a patient's studies in different splits
        problems += _straddling(manifest.rows, "patient_id", "patient")
    problems += _straddling([r for r in manifest.rows if r.study_id], "study_id", "study")
    if hash_content:
        problems += _same_content(manifest.rows, existing, report, progress)
    for p in problems:
        log.debug("%s: %s", manifest.path, p)
    return report


def npz_frame_count(path: Path) -> int:
    """How many frames a MedMNIST-layout ``.npz`` holds (sum of the ``*_images`` lengths), from the array
    headers only. Raises ``OSError``, ``ValueError`` or ``zipfile.BadZipFile`` for an unreadable file."""
    import numpy as np

    total = 0
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if not name.endswith("_images.npy"):
                continue
            with zf.open(name) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape = np.lib.format.read_array_header_1_0(fh)[0]
                else:
                    shape = np.lib.format.read_array_header_2_0(fh)[0]
            total += shape[0] if shape else 1
    return total


def _npz_frames(rows: Sequence[ManifestRow], existing: dict[int, Path]) -> list[Problem]:
    counts: dict[Path, int | str] = {}
    out = []
    for r in rows:
        file = existing.get(r.line)
        if r.frame is None or file is None or not file.name.lower().endswith(".npz"):
            continue
        if file not in counts:
            try:
                counts[file] = npz_frame_count(file)
            except (OSError, ValueError, zipfile.BadZipFile) as exc:
                counts[file] = f"{type(exc).__name__}: {exc}"
        n = counts[file]
        if isinstance(n, str):
            out.append(Problem("unreadable-file", (r.line,), f"cannot read frames of {r.path!r}: {n}"))
        elif r.frame >= n:
            out.append(
                Problem("frame-out-of-range", (r.line,), f"frame {r.frame} of {r.path!r}, which has {n}")
            )
    return out


def _straddling(rows: Sequence[ManifestRow], attr: str, what: str) -> list[Problem]:
    groups: dict[str, list[ManifestRow]] = defaultdict(list)
    for r in rows:
        groups[getattr(r, attr)].append(r)
    out = []
    for gid, members in sorted(groups.items()):
        splits = Counter(r.split for r in members)
        if len(splits) > 1:
            detail = ", ".join(f"{s} ({splits[s]})" for s in SPLITS if s in splits)
            lines = tuple(sorted(r.line for r in members))
            out.append(
                Problem(f"{what}-in-two-splits", lines, f"{what} {gid!r} is in several splits: {detail}")
            )
    return out


def _same_content(
    rows: Sequence[ManifestRow],
    existing: dict[int, Path],
    report: CheckReport,
    progress: Callable[[int, int], None] | None,
) -> list[Problem]:
    whole = [r for r in rows if r.frame is None and r.line in existing]
    # hash each distinct file once; files whose size is unique cannot have a twin, so skip reading them
    by_file: dict[Path, list[ManifestRow]] = defaultdict(list)
    for r in whole:
        by_file[existing[r.line].resolve()].append(r)
    sizes = {f: f.stat().st_size for f in by_file}
    size_count = Counter(sizes.values())
    to_hash = [f for f in by_file if size_count[sizes[f]] > 1]
    by_hash: dict[str, list[ManifestRow]] = defaultdict(list)
    for i, f in enumerate(to_hash):
        by_hash[sha256_file(f)].extend(by_file[f])
        if progress:
            progress(i + 1, len(to_hash))
    report.files_hashed = len(to_hash)
    out = []
    for digest, members in by_hash.items():
        paths = {r.path for r in members}
        splits = {r.split for r in members}
        if len(paths) > 1 and len(splits) > 1:
            names = ", ".join(sorted(paths))
            out.append(
                Problem(
                    "same-content-in-two-splits",
                    tuple(sorted(r.line for r in members)),
                    f"identical files (sha256 {digest[:12]}) in splits "
                    f"{', '.join(s for s in SPLITS if s in splits)}: {names}",
                )
            )
    return out
