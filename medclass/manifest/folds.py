"""Patient-grouped, stratified K-fold cross-validation plans over a manifest's train+val rows.

The test split is never touched: only rows whose split is ``train`` or ``val`` enter the pool. Every
patient (``group``) falls in exactly one of ``k`` folds (scikit-learn's ``StratifiedGroupKFold``,
shuffled with ``seed``; stratified by each image's label, or its finding powerset for multi-label rows).
Fold ``i`` holds out fold ``i`` as its *test* part, uses the next fold, ``(i + 1) mod k``, as its
*validation* part (model selection and the threshold) and trains on the other ``k - 2`` folds, so every
patient is validated on once and held out once. A fold's manifest is the pool with the splits
relabelled (``train``/``val``/``test``), written next to its run, so ``train``, ``evaluate`` and a
human read the same rows.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medclass.errors import DataError
from medclass.manifest.meta import write_meta
from medclass.manifest.split import _stratum_of
from medclass.manifest.table import Manifest, ManifestRow, row_to_record, write_manifest

log = logging.getLogger(__name__)

POOL_SPLITS = ("train", "val")  # what cross-validation may use; "test" stays untouched


@dataclass(frozen=True)
class Fold:
    """One fold (``index`` is 1-based): row indices into the pool for each part."""

    index: int
    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...]


@dataclass(frozen=True)
class CVPlan:
    """The pool (train+val rows of the manifest, in file order), each row's fold (0-based) and the folds."""

    pool: tuple[ManifestRow, ...]
    fold_of_row: tuple[int, ...]
    folds: tuple[Fold, ...]
    k: int
    seed: int


def cv_pool(manifest: Manifest) -> list[ManifestRow]:
    """The rows cross-validation may use: the manifest's train and val rows (never its test rows)."""
    return [r for r in manifest.rows if r.split in POOL_SPLITS]


def assign_folds(
    rows: Sequence[ManifestRow], k: int, *, seed: int = 0, group: str = "patient_id"
) -> list[int]:
    """The fold (0..k-1) of each row: patient-grouped, stratified by label, shuffled with ``seed``.

    ``group`` is ``patient_id`` or ``study_id``. Raises DataError for k < 3 (a fold needs a training, a
    validation and a held-out part), fewer groups than folds, or a row without a group id.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if k < 3:
        raise DataError(f"--folds must be at least 3 (a training, a validation and a held-out fold); got {k}")
    groups = [str(getattr(r, group) or "") for r in rows]
    if any(not g for g in groups):
        line = next(r.line for r, g in zip(rows, groups, strict=True) if not g)
        raise DataError(f"line {line}: no {group} to group the folds by")
    n_groups = len(set(groups))
    if n_groups < k:
        raise DataError(
            f"only {n_groups} {group} value(s) in train+val: too few for {k} folds; use fewer --folds"
        )
    strata = [_stratum_of(row_to_record(r)) for r in rows]
    rare = {s: n for s, n in Counter(strata).items() if n < k}
    if rare:
        log.warning(
            "fewer images than folds for %s: those folds cannot all hold every class",
            ", ".join(f"{s!r} ({n})" for s, n in sorted(rare.items())),
        )
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    fold = [0] * len(rows)
    for f, (_, held) in enumerate(splitter.split(list(range(len(rows))), strata, groups)):
        for i in held:
            fold[int(i)] = f
    return fold


def cv_plan(manifest: Manifest, k: int, *, seed: int = 0, group: str = "patient_id") -> CVPlan:
    """The folds over ``manifest``'s train+val rows (see the module text). Raises DataError as
    :func:`assign_folds` does, or when the manifest has no train/val rows."""
    pool = cv_pool(manifest)
    if not pool:
        raise DataError("no train or val rows to cross-validate", manifest.path)
    fold_of = assign_folds(pool, k, seed=seed, group=group)
    folds = []
    for i in range(k):
        val_fold = (i + 1) % k
        parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
        for j, f in enumerate(fold_of):
            parts["test" if f == i else "val" if f == val_fold else "train"].append(j)
        folds.append(Fold(i + 1, tuple(parts["train"]), tuple(parts["val"]), tuple(parts["test"])))
    return CVPlan(tuple(pool), tuple(fold_of), tuple(folds), k, seed)


def write_fold_manifest(path: Path, manifest: Manifest, plan: CVPlan, fold: Fold) -> Path:
    """Write fold ``fold``'s manifest (the pool, splits relabelled) and its ``.meta.json`` (the source's
    data root, classes and positive class). Returns ``path``. Raises ManifestError if it cannot be written."""
    parts = {i: "train" for i in fold.train} | {i: "val" for i in fold.val} | {i: "test" for i in fold.test}
    records = [row_to_record(r) | {"split": parts[i]} for i, r in enumerate(plan.pool)]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(path, records)
    write_meta(path, data_root=manifest.data_root, classes=manifest.classes, positive=manifest.positive_class)
    return path
