"""Patient-grouped, stratified, seeded train/val/test assignment.

The unit of splitting is the group (patient, or study): every image of a group lands in the same split.
Each group gets one stratum (its most frequent label; for multi-label rows the label powerset of the
findings seen in the group), strata with a single group are pooled, and scikit-learn's
``train_test_split`` is run on the *group ids* with ``stratify`` — first the test groups, then the
validation groups from the rest. Group ids are sorted first, so the result depends only on the records
and the seed, not on their order.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from medclass.errors import DataError
from medclass.manifest.table import FINDING_PREFIX

log = logging.getLogger(__name__)

_RARE = "<rare>"


def group_strata(records: Sequence[Mapping[str, Any]], group: str = "patient_id") -> dict[str, str]:
    """Map each group id to its stratum (most frequent label, or finding powerset such as ``a+c``).

    Raises :class:`DataError` when a record has no value in the ``group`` column.
    """
    labels: dict[str, Counter[str]] = defaultdict(Counter)
    for i, rec in enumerate(records):
        gid = str(rec.get(group) or "")
        if not gid:
            raise DataError(f"record {i} ({rec.get('path')}) has no {group!r} to group by")
        labels[gid][_stratum_of(rec)] += 1
    strata = {}
    for gid, counts in labels.items():
        top = max(counts.values())
        strata[gid] = min(k for k, v in counts.items() if v == top)  # ties: alphabetical, deterministic
    return strata


def _stratum_of(rec: Mapping[str, Any]) -> str:
    findings = sorted(
        k[len(FINDING_PREFIX) :] for k, v in rec.items() if k.startswith(FINDING_PREFIX) and str(v) == "1"
    )
    if any(k.startswith(FINDING_PREFIX) for k in rec):
        return "+".join(findings) or "<none>"
    return str(rec.get("label", ""))


def _pool_rare(strata: dict[str, str], minimum: int) -> dict[str, str]:
    counts = Counter(strata.values())
    pooled = {g: (s if counts[s] >= minimum else _RARE) for g, s in strata.items()}
    counts = Counter(pooled.values())
    if 0 < counts.get(_RARE, 0) < minimum:  # too few rare groups even together: join the largest stratum
        largest = max(sorted(c for c in counts if c != _RARE), key=lambda c: counts[c], default=_RARE)
        pooled = {g: (largest if s == _RARE else s) for g, s in pooled.items()}
    return pooled


def _carve(ids: list[str], strata: dict[str, str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split ``ids`` into (rest, taken) with about ``fraction`` of them taken, stratified where possible."""
    from sklearn.model_selection import train_test_split

    n = len(ids)
    if fraction <= 0 or n == 0:
        return ids, []
    k = max(1, round(fraction * n))
    pooled = _pool_rare({g: strata[g] for g in ids}, minimum=2)
    n_strata = len(set(pooled.values()))
    stratify: list[str] | None = [pooled[g] for g in ids]
    if n_strata < 2 or n - n_strata < n_strata:
        stratify = None
    elif k < n_strata:
        k = n_strata  # one group of every stratum, so no split loses a class
    elif n - k < n_strata:
        k = n - n_strata
    if k >= n:
        raise DataError(f"only {n} group(s): too few to take {fraction:.0%} out and keep the rest")
    if stratify is None and n_strata >= 2:
        log.warning("too few groups per class to stratify %d groups; splitting them at random", n)
    rest, taken = train_test_split(ids, test_size=k, stratify=stratify, random_state=seed, shuffle=True)
    return sorted(rest), sorted(taken)


def assign_splits(
    records: Sequence[Mapping[str, Any]],
    *,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    group: str = "patient_id",
) -> list[str]:
    """The split name (``train``/``val``/``test``) of each record, in record order.

    ``val`` and ``test`` are fractions of the groups (not of the images). Deterministic for a given seed.
    Raises :class:`DataError` for fractions outside [0, 1) that leave no training groups, for records
    without a group id, or for too few groups to split.
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1) or math.isnan(val + test):
        raise DataError(f"val={val} and test={test} must be fractions in [0, 1) that sum to less than 1")
    strata = group_strata(records, group)
    ids = sorted(strata)
    rest, test_ids = _carve(ids, strata, test, seed)
    val_fraction = val / (1 - test) if test < 1 else 0.0
    train_ids, val_ids = _carve(rest, strata, val_fraction, seed)
    where = {g: "train" for g in train_ids}
    where.update({g: "val" for g in val_ids})
    where.update({g: "test" for g in test_ids})
    log.info(
        "split %d groups: %d train, %d val, %d test (seed %d)",
        len(ids),
        len(train_ids),
        len(val_ids),
        len(test_ids),
        seed,
    )
    return [where[str(rec[group])] for rec in records]


def with_splits(
    records: Sequence[Mapping[str, Any]],
    *,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    group: str = "patient_id",
) -> list[dict[str, Any]]:
    """Copies of ``records`` with a ``split`` column from :func:`assign_splits` (same arguments).

    Raises :class:`DataError` as :func:`assign_splits` does.
    """
    splits = assign_splits(records, val=val, test=test, seed=seed, group=group)
    return [{**rec, "split": s} for rec, s in zip(records, splits, strict=True)]
