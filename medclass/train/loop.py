"""Fine-tune Inception V3 with its auxiliary head: the epoch loop of ``medclass train``.

:func:`train` takes a validated :class:`~medclass.train.config.TrainConfig` and runs: load the
manifest, decode and cache the train/val images once, build the model and freeze what the transfer mode
says, then per epoch train (``main + aux_weight × aux`` loss, warmup + cosine LR per step, gradient
clipping, bf16 autocast, channels_last), validate (loss and macro AUC on the main head), write
``metrics.csv``, save ``last`` (+ training state) and, when val AUC improved, ``best``; stop early when
val AUC has not improved for ``patience`` epochs.

Reproducibility: the sample order, the augmentation draws and torch's global RNG (dropout) are re-seeded
from ``(seed, epoch)`` at the start of every epoch, and the optimizer/scheduler state is saved with
``last``; a run resumed from ``last`` therefore ends with the same weights as one never interrupted.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medclass.errors import ConfigError, DataError
from medclass.manifest import Manifest, check_files, data_warnings, load_manifest, positive_class
from medclass.runtime import tune_cpu_malloc
from medclass.train import distributed as dist_
from medclass.train import runfiles
from medclass.train.averaging import WeightAverage
from medclass.train.bnstats import bn_loader, recompute_bn_stats
from medclass.train.config import TrainConfig, check_resumable, read_saved, save_config
from medclass.train.objective import InceptionLoss, epoch_seed, loss_weights
from medclass.train.setup import Prepared, prepare
from medclass.train.steps import StepRunner
from medclass.train.validation import calibrate_best, validate, warn_saturated

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run produced. ``best_epoch`` is 1-based (as in ``metrics.csv``); 0 if no epoch ran."""

    run_dir: Path
    best_epoch: int
    best_auc: float
    last_epoch: int
    stopped_early: bool
    best: Path
    last: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[Any] = field(default_factory=list)  # DecodeFailure of rows that could not be read
    resumed_from: int = 0
    calibration: str = ""  # the calibration stored in best.json, in words ("" when none was fitted)


class _Tracker:
    """Model selection and early stopping on validation, by criterion ``select`` (higher key is better):

    - ``auc``: val AUC (val loss when AUC is undefined); the first epoch of a tie is kept;
    - ``loss``: val NLL of the main head;
    - ``auc+loss``: val AUC, ties (frequent on small validation sets) broken by the lower val NLL.
    """

    def __init__(self, patience: int, select: str = "auc") -> None:
        self.patience = patience
        self.select = select
        self.best_score: list[float] = []
        self.best_epoch = 0
        self.best_auc = float("nan")
        self.best_loss = float("nan")
        self.bad_epochs = 0

    def key(self, auc: float, val_loss: float) -> list[float]:
        a = auc if math.isfinite(auc) else -math.inf
        nll = -val_loss if math.isfinite(val_loss) else -math.inf
        if self.select == "loss":
            return [nll]
        if self.select == "auc+loss":
            return [a, nll]
        return [a if math.isfinite(auc) else nll]

    def update(self, epoch: int, auc: float, val_loss: float) -> bool:
        """Record an epoch; returns True when it is the new best."""
        score = self.key(auc, val_loss)
        if self.best_epoch == 0 or score > list(self.best_score):
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            self.best_auc, self.best_loss = auc, val_loss
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state(self) -> dict[str, Any]:
        return dict(vars(self))

    def load(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)
        if not isinstance(self.best_score, list):  # a run saved before selection criteria existed
            self.best_score = [float(self.best_score)]


def lr_lambda(total_steps: int, warmup_steps: int, min_ratio: float):
    """LR multiplier per optimiser step: linear warmup to 1, then cosine down to ``min_ratio``."""

    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def build_optimizer(config: TrainConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """AdamW or RMSprop (Inception V3 paper: decay 0.9, eps 1.0, momentum 0.9) over ``groups``, each at
    ``lr × lr_scale``."""
    param_groups = [
        {"params": g["params"], "lr": config.lr * float(g.get("lr_scale", 1.0)), "name": g.get("name", "")}
        for g in groups
        if g["params"]
    ]
    if not param_groups:
        raise ConfigError(f"mode {config.mode!r} leaves nothing to train")
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            param_groups, lr=config.lr, alpha=0.9, eps=1.0, momentum=0.9, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(param_groups, lr=config.lr, weight_decay=config.weight_decay)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _settle_classes(manifest: Manifest, config: TrainConfig) -> Manifest:
    """Log the data warnings, refuse a class without training images (unless allowed) and fix the
    positive class of a two-class task. Returns the manifest with ``positive_class`` set.

    Raises :class:`DataError` for an empty class and :class:`ConfigError` when the positive class cannot be
    told from the names and was neither given nor recorded."""
    for warning in data_warnings(manifest):
        log.warning("%s: %s", manifest.path, warning)
    train_rows = manifest.split("train")
    if train_rows:
        present = {r.label for r in train_rows} | {f for r in train_rows for f, v in r.findings.items() if v}
        empty = [c for c in manifest.classes if c not in present]
        if empty and not config.allow_empty_class:
            raise DataError(
                f"class(es) {', '.join(map(repr, empty))} have no training images (classes: "
                f"{', '.join(manifest.classes)}); fix the labels or pass --allow-empty-class",
                manifest.path,
            )
    positive = positive_class(
        manifest.classes, config.positive_class, recorded=manifest.positive_class, task=manifest.task
    )
    if positive is not None:
        source = (
            "--positive-class"
            if config.positive_class
            else "recorded in the manifest"
            if manifest.positive_class
            else "the other class is a negative name"
        )
        negative = next(c for c in manifest.classes if c != positive)
        log.info("positive class: %s (negative: %s; %s)", positive, negative, source)
    return dataclasses.replace(manifest, positive_class=positive)


def train(config: TrainConfig, *, resume: bool = False, max_epochs: int | None = None) -> TrainResult:
    """Run (or, with ``resume``, continue) the training described by ``config``.

    ``max_epochs`` stops after that many epochs of *this call* (used to simulate interruptions).
    Returns a :class:`TrainResult`. Raises :class:`ConfigError` for bad settings or an incompatible
    resume, :class:`DataError` when a split has no usable image, and the stages' own errors (manifest,
    checkpoint) as they are.
    """
    config.validate()
    ctx = dist_.setup(config.device)
    try:
        return _train(config, ctx, resume, max_epochs)
    finally:
        dist_.cleanup(ctx)


def _train(config: TrainConfig, ctx: dist_.DistContext, resume: bool, max_epochs: int | None) -> TrainResult:
    from medclass.preprocess import input_spec

    if config.image_size is None:  # record the size actually used (the model's own: 299)
        config = dataclasses.replace(config, image_size=input_spec(config.model_name).size)
    run_dir = config.run_dir
    seed_everything(config.seed)
    if ctx.device.type == "cpu" and tune_cpu_malloc():
        log.debug("glibc malloc thresholds raised for CPU training")
    manifest = load_manifest(
        Path(config.manifest), config.data_root, allow_outside_root=config.allow_outside_root
    )
    check_files(manifest, manifest.split("train") + manifest.split("val"))  # before any decoding
    manifest = _settle_classes(manifest, config)
    saved_path = run_dir / "config.yaml"
    start_epoch, tracker, history = 0, _Tracker(config.patience, config.select), []
    if resume:  # checked before any decoding or model building
        if not (run_dir / "last.json").is_file():
            raise ConfigError("nothing to resume: no 'last' checkpoint in this run folder", run_dir)
        check_resumable(read_saved(saved_path), config, manifest.sha256, saved_path)
    elif saved_path.exists() or (run_dir / "last.json").exists():
        raise ConfigError(
            "already holds a training run; pass --resume to continue it or choose another --out", run_dir
        )
    dist_.barrier(ctx)  # every rank has checked before rank 0 writes anything
    writer = runfiles.tensorboard_writer(run_dir) if (config.tensorboard and ctx.is_main) else None
    p: Prepared = prepare(config, ctx, manifest)

    model, ddp = p.model, p.ddp
    steps_per_epoch = max(1, len(p.train_loader))
    total = steps_per_epoch * config.epochs
    warmup = round(config.warmup_epochs * steps_per_epoch)
    optimizer = build_optimizer(config, p.groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, warmup, config.min_lr_ratio))

    ema = WeightAverage(model, config.ema_decay) if config.ema else None
    if resume:
        start_epoch = p.io.restore(model, optimizer, scheduler, tracker, ema)
        history = [
            r for r in runfiles.read_metrics(run_dir / "metrics.csv") if (r.get("epoch") or 0) <= start_epoch
        ]
        log.info("resuming after epoch %d of %d", start_epoch, config.epochs)
        if tracker.should_stop:
            log.info("this run had already stopped early (patience %d): nothing to resume", config.patience)
    elif ctx.is_main:
        save_config(config, saved_path, manifest_sha256=p.manifest.sha256, classes=p.classes, task=p.task)
    dist_.barrier(ctx)

    weight = None
    if config.imbalance == "weighted":
        weight = loss_weights(p.train_targets, len(p.classes), p.task).to(ctx.device)
        log.info("class weights for the loss: %s", [round(float(w), 3) for w in weight])
    criterion = InceptionLoss(
        p.task, aux_weight=config.aux_weight, label_smoothing=config.label_smoothing, weight=weight
    ).to(ctx.device)
    val_criterion = InceptionLoss(p.task)
    runner = StepRunner(
        ddp,
        optimizer,
        criterion,
        device=ctx.device,
        scheduler=scheduler,
        precision=config.precision,
        channels_last=config.channels_last,
        grad_clip=config.grad_clip,
        augment=p.augment,
        after_step=None if ema is None else (lambda: ema.update(model)),
    )
    bn_batches = (
        bn_loader(p.train_ds, batch_size=config.batch_size, max_batches=config.bn_batches, seed=config.seed)
        if config.bn_batches > 0
        else None
    )
    stopped = False
    last_epoch = start_epoch
    end = config.epochs if max_epochs is None else min(config.epochs, start_epoch + max_epochs)
    if tracker.should_stop:
        end, stopped = start_epoch, True
    for epoch in range(start_epoch, end):
        p.train_sampler.set_epoch(epoch)
        torch.manual_seed(epoch_seed(config.seed, epoch, 0))  # dropout & co.
        gen = torch.Generator().manual_seed(epoch_seed(config.seed, epoch, 2))  # augmentation
        lr_now = optimizer.param_groups[0]["lr"]
        ddp.train()
        bar = p.progress_bar(epoch, steps_per_epoch, tracker.best_auc if history else float("nan"))
        stats = runner.run(bar.wrap(p.train_loader), gen, on_sync=bar.loss)
        bar.close()
        loss, main_loss, aux_loss, n_seen = dist_.all_reduce_sum(
            [
                stats.loss * stats.samples,
                stats.main_loss * stats.samples,
                stats.aux_loss * stats.samples,
                float(stats.samples),
            ],
            ctx,
        )
        held = model if ema is None else ema.module  # the weights validated, selected and saved as best
        for m in (model,) if ema is None else (model, held):
            if bn_batches is not None:  # statistics of the weights validated and saved, not a lagging average
                recompute_bn_stats(
                    m,
                    bn_batches,
                    device=ctx.device,
                    max_batches=config.bn_batches,
                    precision=config.precision,
                    channels_last=config.channels_last,
                )
        raw_auc, raw_loss, _, _ = validate(p, model, val_criterion, config, ctx) if ema else (None,) * 4
        val_auc, val_loss, val_count, val_saturated = validate(p, held, val_criterion, config, ctx)
        row = {
            "epoch": epoch + 1,
            "lr": lr_now,
            "train_loss": loss / n_seen,
            "train_main_loss": main_loss / n_seen,
            "train_aux_loss": aux_loss / n_seen,
            "val_loss": val_loss,
            "val_auc": val_auc,
            "val_count": val_count,
            "val_saturated": val_saturated,
            "raw_val_loss": raw_loss,
            "raw_val_auc": raw_auc,
            "seconds": stats.seconds,
            "img_per_s": n_seen / stats.seconds if stats.seconds else float("nan"),
        }
        history.append(row)
        improved = tracker.update(epoch + 1, val_auc, val_loss)
        last_epoch = epoch + 1
        log.info(
            "epoch %d/%d: train loss %.4f (main %.4f, aux %.4f), val loss %.4f, val AUC %.4f%s, %.1f img/s",
            epoch + 1,
            config.epochs,
            row["train_loss"],
            row["train_main_loss"],
            row["train_aux_loss"],
            val_loss,
            val_auc,
            " (best)" if improved else "",
            row["img_per_s"],
        )
        if ctx.is_main:
            metrics = {k: v for k, v in row.items() if k != "epoch"} | {"epoch": epoch + 1}
            if improved:
                p.io.save_weights("best", held, metrics, weights="raw" if ema is None else "ema")
            p.io.save_weights("last", model, metrics, weights="raw")
            p.io.save_state(optimizer, scheduler, tracker, epoch + 1, ema)
            runfiles.write_metrics(run_dir / "metrics.csv", history)
            if writer is not None:
                for k in (
                    "lr",
                    "train_loss",
                    "train_main_loss",
                    "train_aux_loss",
                    "val_loss",
                    "val_auc",
                    "img_per_s",
                ):
                    writer.add_scalar(k, row[k], epoch + 1)
                writer.flush()
        dist_.barrier(ctx)
        if tracker.should_stop:
            stopped = True
            log.info("early stopping: val AUC has not improved for %d epochs", tracker.patience)
            break
    if writer is not None:
        writer.close()
    warn_saturated(history, tracker.best_epoch)
    calibration = calibrate_best(p, model, val_criterion, config, ctx)
    if config.profile and ctx.is_main and tracker.best_epoch and last_epoch > start_epoch:
        _profile_best(p, run_dir, config, ctx)  # after calibration: best's sidecar is final by now
    return TrainResult(
        run_dir=run_dir,
        best_epoch=tracker.best_epoch,
        best_auc=tracker.best_auc,
        last_epoch=last_epoch,
        stopped_early=stopped,
        best=run_dir / "best",
        last=run_dir / "last",
        history=history,
        skipped=p.skipped,
        resumed_from=start_epoch if resume else 0,
        calibration=calibration,
    )


def _profile_best(p: Prepared, run_dir: Path, config: TrainConfig, ctx: dist_.DistContext) -> None:
    """The input gate's profile into ``best`` (:mod:`medclass.train.profiling`). A failure leaves ``best``
    without one, with a warning saying how to add it later: the trained weights are still good."""
    from medclass.errors import MedclassError
    from medclass.train.profiling import profile_checkpoint

    try:
        profile_checkpoint(
            run_dir / "best", p.manifest, p.train_ds, p.val_ds,
            device=str(ctx.device), batch_size=config.batch_size, seed=config.seed,
        )  # fmt: skip
    except MedclassError as exc:
        log.warning(
            "best has no input-gate profile (%s); add one with: medclass profile --checkpoint %s --manifest %s",
            exc, run_dir / "best", config.manifest,
        )  # fmt: skip
