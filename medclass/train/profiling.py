"""The input gate's training-data profile for a checkpoint: at the end of ``medclass train`` (its ``best``)
and for an existing checkpoint (``medclass profile``).

:func:`profile_checkpoint` runs the checkpoint's own weights over the preprocessed training and validation
images once (the one :class:`~medclass.model.predictor.TorchPredictor`, features from the same forward
pass as the probabilities), fits a :class:`~medclass.gate.GateProfile` (:func:`medclass.gate.fit_profile`)
and stores it in the sidecar under ``gate_profile`` (:func:`medclass.checkpoint.update_meta`: the sidecar
is replaced atomically and re-sealed, the weights are not touched, so the pair stays consistent).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medclass.gate import PROFILE_KEY, facts_of_rows, fit_profile

log = logging.getLogger(__name__)

__all__ = ["profile_checkpoint", "profile_from_manifest"]


def profile_checkpoint(
    stem: Path,
    manifest: Any,
    train_ds: Any,
    val_ds: Any | None,
    *,
    device: str = "cpu",
    batch_size: int = 32,
    seed: int = 0,
) -> Path:
    """Fit the gate profile of checkpoint ``stem`` on ``train_ds``/``val_ds`` (datasets of ``(3×S×S,
    target)`` preprocessed as the checkpoint says; ``manifest`` gives the training rows' headers) and
    write it into its sidecar. Returns the sidecar's path. Raises :class:`~medclass.errors.CheckpointError`
    for a checkpoint that does not load and :class:`~medclass.errors.DataError` without training images.
    """
    from medclass import checkpoint
    from medclass.model.predictor import TorchPredictor

    ckpt = checkpoint.load(stem)
    predictor = TorchPredictor(ckpt.model, ckpt.task, device=device)
    facts = facts_of_rows(manifest, manifest.split("train"))
    profile = fit_profile(
        predictor.predict, train_ds, val_ds, facts, task=ckpt.task, batch_size=batch_size, seed=seed
    )
    return checkpoint.update_meta(stem, {PROFILE_KEY: profile.to_dict()})


def profile_from_manifest(
    checkpoint_path: Path | str,
    manifest_path: Path | str,
    *,
    data_root: Path | str | None = None,
    allow_outside_root: bool = False,
    device: str = "cpu",
    batch_size: int = 32,
    workers: int | None = None,
) -> Path:
    """``medclass profile``: the gate profile of an existing checkpoint from the ``train`` (fit) and ``val``
    (threshold) rows of a manifest, decoded with the checkpoint's preprocessing. Returns the sidecar's
    path. Raises the manifest's, the checkpoint's and :class:`~medclass.errors.DataError` as they come.
    """
    from medclass import checkpoint
    from medclass.manifest import check_files, load_manifest
    from medclass.preprocess import Preprocessor
    from medclass.preprocess.dataset import CachedDataset
    from medclass.weights import read_meta

    stem = checkpoint.resolve(checkpoint_path)
    meta = read_meta(stem)
    manifest = load_manifest(Path(manifest_path), data_root, allow_outside_root=allow_outside_root)
    check_files(manifest, manifest.split("train") + manifest.split("val"))
    preprocessor = Preprocessor.from_meta(meta)
    train_ds = CachedDataset(manifest, "train", preprocessor, workers=workers).load()
    val_ds = (
        CachedDataset(manifest, "val", preprocessor, workers=workers).load()
        if manifest.split("val")
        else None
    )
    return profile_checkpoint(stem, manifest, train_ds, val_ds, device=device, batch_size=batch_size)
