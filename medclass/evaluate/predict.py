"""Model forward for evaluation: a checkpoint and a manifest in, predictions rows out.

Heavy modules (torch, the model, the dataset) are imported inside :func:`predict_manifest` so that
importing :mod:`medclass.evaluate` stays cheap and the pure layer works without them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medclass.errors import DataError
from medclass.names import FINDING_PREFIX, PROB_PREFIX
from medclass.phi import pseudonym

log = logging.getLogger(__name__)


def image_id(row: Any) -> str:
    """The row's ``image_id``: as given in the manifest, else ``path`` or ``path#frame``."""
    given = getattr(row, "image_id", "")
    if given:
        return str(given)
    frame = getattr(row, "frame", None)
    return str(row.path) if frame is None else f"{row.path}#{frame}"


def _truth(row: Any, manifest: Any) -> dict[str, Any]:
    if manifest.task == "multilabel":
        return {f"{FINDING_PREFIX}{f}": int(row.findings[f]) for f in manifest.findings}
    return {"label": row.label}


def predict_manifest(
    checkpoint: str | os.PathLike[str],
    manifest: str | os.PathLike[str] | Any,
    splits: Sequence[str] = ("val", "test"),
    data_root: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    *,
    device: str = "cpu",
    cache: str = "memory",
    workers: int | None = None,
    progress: bool = False,
    allow_outside_root: bool = False,
) -> list[dict[str, Any]]:
    """Probabilities of the checkpoint's main head for every row of ``splits`` of the manifest.

    Returns predictions rows (``image_id``, pseudonymised ``patient_id``/``study_id``, ``split``, the
    truth as ``label`` or ``finding:<name>``, ``prob:<class>``, and the manifest's other columns). Rows
    whose file cannot be decoded are skipped with a warning. ``allow_outside_root`` (a manifest given as a
    path; None: off unless the caller opted in) lets manifest paths leave the data root. Raises
    CheckpointError for a bad checkpoint, ManifestError for a bad manifest (UnsafePathError, naming the
    line, for a path that leaves the data root: the whole manifest is refused), and DataError when the
    manifest's classes or task differ from the checkpoint's or a split has no decodable rows.
    """
    import numpy as np
    from torch.utils.data import DataLoader

    from medclass import checkpoint as checkpoints
    from medclass.manifest import check_files, load_manifest
    from medclass.model.predictor import TorchPredictor
    from medclass.preprocess import Preprocessor
    from medclass.preprocess.dataset import CachedDataset

    ckpt = checkpoints.load(Path(checkpoint))
    meta = ckpt.meta
    classes, task = list(meta["classes"]), str(meta["task"])
    if isinstance(manifest, (str, os.PathLike)):
        manifest = load_manifest(
            manifest,
            data_root,
            classes=classes if task == "multiclass" else None,
            allow_outside_root=allow_outside_root,
        )
    check_files(manifest, [r for s in splits for r in manifest.split(s)])  # before any decoding
    if list(manifest.classes) != classes or str(manifest.task) != task:
        raise DataError(
            f"the manifest has {manifest.task} classes {list(manifest.classes)} but the checkpoint was trained "
            f"on {task} classes {classes}",
            getattr(manifest, "path", None),
        )
    preprocessor = Preprocessor.from_meta(meta)
    predictor = TorchPredictor(ckpt.model, task, device=device)  # the one predictor (score, explain too)
    out: list[dict[str, Any]] = []
    for split in splits:
        ds = CachedDataset(
            manifest, split, preprocessor, cache=cache, workers=workers, progress=progress
        ).load()
        if ds.errors:
            log.warning(
                "%s split: %d of %d rows could not be decoded and are left out",
                split,
                len(ds.errors),
                len(ds.rows),
            )
        by_id = {image_id(r): r for r in ds.rows}
        ids = ds.image_ids()
        probs = [predictor(x) for x, _ in DataLoader(ds, batch_size=batch_size, shuffle=False)]  # B×C each
        scores: Any = np.concatenate(probs) if probs else []
        for iid, p in zip(ids, scores, strict=True):
            row = by_id[iid]
            rec: dict[str, Any] = {
                "image_id": iid,
                "patient_id": pseudonym(row.patient_id),
                "study_id": pseudonym(row.study_id, prefix="S") if row.study_id else "",
                "split": row.split,
            }
            rec |= _truth(row, manifest)
            rec |= {f"{PROB_PREFIX}{c}": float(v) for c, v in zip(classes, p, strict=True)}
            rec |= {k: v for k, v in row.extra.items() if k not in rec}
            out.append(rec)
        log.info("%s split: predicted %d images", split, len(ids))
    return out


def find_training_metrics(
    checkpoint: str | os.PathLike[str] | None, run_dir: str | os.PathLike[str] | None
) -> Path | None:
    """The training run's ``metrics.csv``: in ``run_dir`` if given, else beside the checkpoint, else None."""
    for folder in (run_dir, None if checkpoint is None else Path(checkpoint).parent):
        if folder is not None and (Path(folder) / "metrics.csv").is_file():
            return Path(folder) / "metrics.csv"
    return None
