"""Everything a run needs before its first step: data, model, loaders, augmentation, run files.

:func:`prepare` reads the manifest, builds the preprocessor from the model's input spec, decodes and
caches the train/val splits (rank 0 first when a disk cache is shared), builds the model (random init
unless ``weights``), applies the transfer mode, moves it to the device (channels_last) and wraps it in
DDP when distributed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

from medclass.errors import DataError
from medclass.model import apply_mode, create_model, to_device
from medclass.preprocess.dataset import CachedDataset
from medclass.train import distributed as dist_
from medclass.train.augment import build_augment
from medclass.train.config import TrainConfig
from medclass.train.objective import EpochSampler, class_counts, sample_weights
from medclass.train.runfiles import EpochBar, RunIO

log = logging.getLogger(__name__)


def backbone_lr_scale(config: TrainConfig) -> float:
    """The backbone's LR factor in full mode: as configured, else 0.1 when fine-tuning local weights and
    1.0 from scratch (a random backbone must learn as fast as the heads)."""
    if config.backbone_lr_scale is not None:
        return config.backbone_lr_scale
    return 0.1 if config.weights else 1.0


@dataclass
class Prepared:
    config: TrainConfig
    ctx: dist_.DistContext
    manifest: Any
    spec: Any
    preprocessor: Any
    train_ds: CachedDataset
    val_ds: CachedDataset | None
    train_sampler: EpochSampler
    train_loader: DataLoader
    val_loader: DataLoader | None
    model: torch.nn.Module  # the bare model (checkpoints, validation)
    ddp: torch.nn.Module  # what the optimiser steps run (DDP wrapper or the model itself)
    groups: list[dict[str, Any]]
    augment: Any
    io: RunIO
    skipped: list[Any] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    @property
    def task(self) -> str:
        return str(self.manifest.task)

    @property
    def train_targets(self) -> torch.Tensor:
        return self.train_ds.targets()

    def progress_bar(self, epoch: int, steps: int, last_auc: float) -> EpochBar:
        enabled = self.config.progress and self.ctx.is_main
        return EpochBar(f"epoch {epoch + 1}/{self.config.epochs}", steps, last_auc, enabled)


def _datasets(config: TrainConfig, manifest: Any, preprocessor: Any, ctx: dist_.DistContext):
    cache_dir = Path(config.cache_dir) if config.cache_dir else config.run_dir / "cache"
    workers = config.workers
    if workers is None and ctx.enabled:
        workers = 1  # ranks already share the cores

    def build(split: str) -> CachedDataset:
        return CachedDataset(
            manifest,
            split,
            preprocessor,
            cache=config.cache,
            cache_dir=cache_dir if config.cache == "disk" else None,
            dtype=config.cache_dtype,
            workers=workers,
            progress=config.progress and ctx.is_main,
        )

    def load_all() -> tuple[CachedDataset, CachedDataset | None]:
        train_ds = build("train").load()
        val_rows = manifest.split("val")
        if not val_rows:
            log.warning(
                "%s: no 'val' rows: no validation AUC, early stopping off, 'best' = last epoch", manifest.path
            )
            return train_ds, None
        return train_ds, build("val").load()

    if ctx.enabled and config.cache == "disk":  # rank 0 decodes and writes the cache, the others read it
        if ctx.is_main:
            out = load_all()
        dist_.barrier(ctx)
        if not ctx.is_main:
            out = load_all()
        return out
    return load_all()


def aux_head_off(model: torch.nn.Module, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Turn the aux head off for training (``aux_weight`` 0): not computed, frozen, left out of the
    optimizer, kept in the checkpoint as it was. Returns the parameter groups without it."""
    head: Any = getattr(model, "AuxLogits", None)
    if head is None:
        return groups
    frozen = {id(q) for q in head.parameters()}
    for q in head.parameters():
        q.requires_grad_(False)
    model.aux_logits = False  # type: ignore[assignment]
    log.info("aux_weight 0: the auxiliary head is off")
    return [dict(g, params=[q for q in g["params"] if id(q) not in frozen]) for g in groups]


def prepare(config: TrainConfig, ctx: dist_.DistContext, manifest: Any) -> Prepared:
    """Build data, model and loaders for ``config`` and the loaded ``manifest`` on ``ctx``'s device.

    Raises the stages' errors, and :class:`DataError` when the training split holds a single class.
    """
    from medclass.preprocess import Preprocessor, input_spec

    spec = input_spec(config.model_name, config.image_size)
    preprocessor = Preprocessor(spec, window=config.window, fit=config.fit)
    train_ds, val_ds = _datasets(config, manifest, preprocessor, ctx)
    skipped = list(train_ds.errors) + (list(val_ds.errors) if val_ds is not None else [])
    targets = train_ds.targets()
    counts = class_counts(targets, len(manifest.classes), manifest.task)
    log.info(
        "train: %d images (%s); val: %d images",
        len(train_ds),
        ", ".join(f"{c} {int(n)}" for c, n in zip(manifest.classes, counts.tolist(), strict=True)),
        0 if val_ds is None else len(val_ds),
    )
    if manifest.task == "multiclass" and int((counts > 0).sum()) < 2:
        raise DataError(
            "the training split holds a single class; a classifier needs at least two", manifest.path
        )

    if config.weights is None:
        log.info("training from scratch (random init): no --weights given")
    model = create_model(
        len(manifest.classes), aux_logits=True, image_size=int(spec.size), weights=config.weights
    )
    groups = apply_mode(
        model, config.mode, partial_blocks=config.partial_blocks, backbone_lr_scale=backbone_lr_scale(config)
    )
    if config.aux_weight == 0:
        groups = aux_head_off(model, groups)
    to_device(model, ctx.device, channels_last=config.channels_last)
    ddp = dist_.wrap(model, ctx)

    weights = (
        sample_weights(targets, len(manifest.classes), manifest.task)
        if config.imbalance == "balanced"
        else None
    )
    sampler = EpochSampler(
        len(train_ds), seed=config.seed, weights=weights, rank=ctx.rank, world_size=ctx.world_size
    )
    per_rank = len(sampler)
    drop_last = per_rank > config.batch_size  # a last batch of 1 breaks BatchNorm in training mode
    train_loader = DataLoader(
        train_ds,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=0,
        drop_last=drop_last,
        pin_memory=ctx.device.type == "cuda",
    )
    val_loader = None
    if val_ds is not None:
        val_sampler: Any = (
            DistributedSampler(val_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=False)
            if ctx.enabled
            else SequentialSampler(val_ds)
        )
        val_loader = DataLoader(
            val_ds,
            batch_size=config.batch_size,
            sampler=val_sampler,
            num_workers=0,
            pin_memory=ctx.device.type == "cuda",
        )
    augment = None
    if config.augment:
        augment = build_augment(
            mean=spec.mean,
            std=spec.std,
            rotate=config.rotate,
            scale=config.scale,
            translate=config.translate,
            hflip=config.hflip,
            brightness=config.brightness,
            contrast=config.contrast,
        )
    io = RunIO(config, manifest, spec, preprocessor)
    return Prepared(
        config=config,
        ctx=ctx,
        manifest=manifest,
        spec=spec,
        preprocessor=preprocessor,
        train_ds=train_ds,
        val_ds=val_ds,
        train_sampler=sampler,
        train_loader=train_loader,
        val_loader=val_loader,
        model=model,
        ddp=ddp,
        groups=groups,
        augment=augment,
        io=io,
        skipped=skipped,
    )
