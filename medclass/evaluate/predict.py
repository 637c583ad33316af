"""Model forward for evaluation: a checkpoint and a manifest in, predictions rows out.

Heavy modules (torch, the model, the dataset) are imported inside :func:`predict_manifest` so that
importing :mod:`medclass.evaluate` stays cheap and the pure layer works without them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from medclass.errors import DataError
from medclass.names import FINDING_PREFIX, PROB_PREFIX, RAW_PROB_PREFIX
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


def load_checked(
    checkpoint: Any, manifest: Any, splits: Sequence[str], data_root: Any, allow_outside_root: bool
) -> Any:
    """``(ckpt, manifest)``: the checkpoint loaded and the manifest (a path or a loaded one) checked against it (see
    :func:`predict_manifest` for what is raised)."""
    from medclass import checkpoint as checkpoints
    from medclass.manifest import check_files, load_manifest

    ckpt = checkpoints.load(Path(checkpoint))
    classes, task = list(ckpt.meta["classes"]), str(ckpt.meta["task"])
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
    return ckpt, manifest


def _forward(
    ckpt: Any,
    manifest: Any,
    splits: Sequence[str],
    predictor: Any,
    batch_size: int,
    dataset_options: Any,
    gate: Any = None,
) -> Iterator[tuple[str, Any, list[str], Any, Any, list[Any]]]:
    """Per split: ``(split, dataset, image ids, logits N×C, targets, verdicts)`` through the one predictor;
    ``verdicts``: the input ``gate``'s :class:`~medclass.gate.GateResult` per image (features from the same
    forward pass), [] without an active gate."""
    import torch
    from torch.utils.data import DataLoader

    from medclass.preprocess import Preprocessor
    from medclass.preprocess.dataset import CachedDataset

    preprocessor = Preprocessor.from_meta(ckpt.meta)
    for split in splits:
        ds = CachedDataset(manifest, split, preprocessor, **dataset_options).load()
        if ds.errors:
            log.warning(
                "%s split: %d of %d rows could not be decoded and are left out",
                split,
                len(ds.errors),
                len(ds.rows),
            )
        ids = ds.image_ids()
        by_id = {image_id(r): r for r in ds.rows}
        logits, targets = [], []
        verdicts: list[Any] = []
        for x, y in DataLoader(ds, batch_size=batch_size, shuffle=False):
            if gate is not None and gate.active:
                z, feats = predictor.logits_and_features(x)  # B×C, B×D (None without features)
                feats = None if feats is None or not gate.wants_features else feats.float().cpu().numpy()
                facts = [_facts(manifest, by_id[i]) for i in ids[len(verdicts) : len(verdicts) + len(x)]]
                verdicts += gate.judge(facts, x.numpy(), feats)
            else:
                z = predictor.logits(x)
            logits.append(z.float().cpu())  # B×C
            targets.append(y)
        n = len(ckpt.meta["classes"])
        yield (split, ds, ids, torch.cat(logits) if logits else torch.empty(0, n),
               torch.cat(targets) if targets else torch.empty(0), verdicts)  # fmt: skip


def _facts(manifest: Any, row: Any) -> Any:
    """The input gate's header facts of a manifest row (None when its header cannot be read)."""
    from medclass import ingest
    from medclass.errors import MedclassError
    from medclass.gate import ImageFacts

    try:
        return ImageFacts.from_meta(ingest.read_meta(manifest.resolve(row)))
    except MedclassError:
        return None


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
    calibrated: bool = True,
    gate: str = "off",
) -> list[dict[str, Any]]:
    """Probabilities of the checkpoint's main head for every row of ``splits`` of the manifest.

    Returns predictions rows (``image_id``, pseudonymised ``patient_id``/``study_id``, ``split``, the
    truth as ``label`` or ``finding:<name>``, ``prob:<class>``, and the manifest's other columns). The
    probabilities are calibrated by the checkpoint's calibration (when it has one and ``calibrated``), and
    then the raw ones are added as ``raw:<class>``. Rows whose file cannot be decoded are skipped with a
    warning. ``allow_outside_root`` (a manifest given as a path; None: off unless the caller opted in) lets
    manifest paths leave the data root. Raises CheckpointError for a bad checkpoint, ManifestError for a bad
    manifest (UnsafePathError, naming the line, for a path that leaves the data root: the whole manifest is
    refused), and DataError when the manifest's classes or task differ from the checkpoint's or a split has
    no decodable rows.

    ``gate`` (``flag``/``refuse``: :mod:`medclass.gate`, with the checkpoint's profile) adds ``in_scope``,
    ``gate_reason`` and ``ood_score`` to every row (features from the same forward pass; ``refuse`` is
    the caller's to apply: the rows keep their probabilities here); ``off`` adds nothing.
    """
    from medclass.calibrate import from_meta
    from medclass.gate import Gate
    from medclass.model.predictor import TorchPredictor

    ckpt, manifest = load_checked(checkpoint, manifest, splits, data_root, allow_outside_root)
    classes = list(ckpt.meta["classes"])
    calibration = from_meta(ckpt.meta, enabled=calibrated)
    predictor = TorchPredictor(
        ckpt.model, ckpt.task, device=device, calibration=calibration
    )  # the one predictor
    out: list[dict[str, Any]] = []
    options = {"cache": cache, "workers": workers, "progress": progress}
    judge = Gate.from_meta(ckpt.meta, gate)
    for split, ds, ids, logits, _, verdicts in _forward(
        ckpt, manifest, splits, predictor, batch_size, options, judge
    ):
        by_id = {image_id(r): r for r in ds.rows}
        scores = predictor.probabilities(logits)  # N×C
        raw = predictor.probabilities(logits, calibrated=False) if calibration is not None else None
        for i, (iid, p) in enumerate(zip(ids, scores, strict=True)):
            row = by_id[iid]
            rec: dict[str, Any] = {
                "image_id": iid,
                "patient_id": pseudonym(row.patient_id),
                "study_id": pseudonym(row.study_id, prefix="S") if row.study_id else "",
                "split": row.split,
            }
            rec |= _truth(row, manifest)
            rec |= {f"{PROB_PREFIX}{c}": float(v) for c, v in zip(classes, p, strict=True)}
            if raw is not None:
                rec |= {f"{RAW_PROB_PREFIX}{c}": float(v) for c, v in zip(classes, raw[i], strict=True)}
            if verdicts:
                rec |= verdicts[i].columns()
            rec |= {k: v for k, v in row.extra.items() if k not in rec}
            out.append(rec)
        log.info("%s split: predicted %d images", split, len(ids))
    return out


def calibrate_checkpoint(
    checkpoint: str | os.PathLike[str],
    manifest: str | os.PathLike[str] | Any,
    split: str = "val",
    data_root: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    *,
    method: str = "auto",
    device: str = "cpu",
    allow_outside_root: bool = False,
    write: bool = True,
) -> Any:
    """Fit a calibration (:func:`medclass.calibrate.fit_calibration`) on the checkpoint's logits for
    ``split`` of the manifest and, with ``write``, store it in the checkpoint's sidecar (re-sealed; the
    weights and their sha256 are untouched). An ``operating_point`` stored by an earlier evaluate is on the
    old probability scale, so it is removed (run evaluate again). Returns the
    :class:`~medclass.calibrate.Calibration`. Raises what :func:`predict_manifest` raises, and DataError when
    the split has no decodable rows.
    """
    from medclass import checkpoint as checkpoints
    from medclass.calibrate import fit_calibration
    from medclass.model.predictor import TorchPredictor

    ckpt, manifest = load_checked(checkpoint, manifest, (split,), data_root, allow_outside_root)
    predictor = TorchPredictor(ckpt.model, ckpt.task, device=device)
    _, _, ids, logits, targets, _ = next(_forward(ckpt, manifest, (split,), predictor, batch_size, {}))
    if not ids:
        raise DataError(
            f"no decodable rows in split {split!r} to calibrate on", getattr(manifest, "path", None)
        )
    positive = ckpt.meta.get("positive_class")
    index = ckpt.classes.index(positive) if positive in ckpt.classes else 1
    cal = fit_calibration(
        logits.numpy(), targets.numpy(), ckpt.task, method=method, positive=index, split=split
    )
    if write:
        stale = "operating_point" in ckpt.meta
        checkpoints.update_meta(ckpt.path, {"calibration": cal.to_dict()}, drop=("operating_point",))
        if stale:
            log.warning(
                "removed the checkpoint's operating point (chosen on the old scale): run evaluate again"
            )
    return cal


def find_training_metrics(
    checkpoint: str | os.PathLike[str] | None, run_dir: str | os.PathLike[str] | None
) -> Path | None:
    """The training run's ``metrics.csv``: in ``run_dir`` if given, else beside the checkpoint, else None."""
    for folder in (run_dir, None if checkpoint is None else Path(checkpoint).parent):
        if folder is not None and (Path(folder) / "metrics.csv").is_file():
            return Path(folder) / "metrics.csv"
    return None
