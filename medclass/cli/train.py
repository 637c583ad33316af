"""``medclass train``: fine-tune Inception V3 (with its auxiliary head) on a manifest."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from medclass.cli import ExitCode
from medclass.names import (
    CACHE_DTYPES,
    CACHE_MODES,
    CALIBRATION_METHODS,
    DEVICE_NAMES,
    PRECISION_NAMES,
    TRANSFER_MODE_NAMES,
)
from medclass.train.config import SELECTIONS

HELP = "fine-tune Inception V3 (main + auxiliary head) on a manifest"

DESCRIPTION = """\
Fine-tune timm's Inception V3 with its auxiliary head on the train split of a manifest, validating on its
val split every epoch (loss and macro AUC of the main head). Images are decoded once and cached; mild
augmentation (small rotation/scale/shift, brightness/contrast; no horizontal flip unless --hflip) is
applied to the training batches only.

Settings come from, in increasing priority: built-in defaults, a YAML file (--config; keys are the long
option names with '_' or '-'), and the options you type. The resolved settings are saved as
RUN_DIR/config.yaml with the manifest's sha256, the package versions and the seed.

The run folder receives:
  best.safetensors + best.json   weights of the best epoch (--select), and their metadata
  last.safetensors + last.json   weights after the last epoch (+ last.state.*, to --resume)
  metrics.csv                    epoch, lr, train/val losses, val AUC, seconds, img/s
  config.yaml                    the resolved settings

Transfer modes: linear (only the two heads train; frozen BatchNorms keep their statistics), partial (the
last --partial-blocks Inception blocks, the aux head and fc), full (everything; the backbone at
--backbone-lr-scale × --lr). Without --weights the model starts from random init (logged).

Examples:
  # quick run at 128 px on the CPU (a few minutes per epoch on a small set)
  medclass train --manifest data_manifests/pneumoniamnist.csv --data-root ../shared/data \\
      --out runs/quick --image-size 128 --epochs 3 --batch-size 32

  # full run at the model's native 299 px, settings in a file, fixed seed
  medclass train --config train.yaml --manifest data_manifests/kermany_cxr.csv --out runs/k299 --seed 1

  # linear probe on top of local ImageNet weights
  medclass train --manifest m.csv --out runs/probe --weights weights/inception_v3.safetensors --mode linear

  # timm's ImageNet weights by name, from the Hugging Face cache (offline once cached: HF_HUB_OFFLINE=1)
  medclass train --manifest m.csv --out runs/tv --weights timm:inception_v3.tv_in1k --mode partial

  # continue an interrupted run with the same settings
  medclass train --out runs/k299 --resume

  # two processes on one machine (gloo on CPU, NCCL on GPUs)
  torchrun --nproc-per-node 2 -m medclass train --manifest m.csv --out runs/ddp
"""

# option → (config field, argparse kwargs). Defaults are suppressed: only options given override.
_OPTIONS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "--manifest",
        "manifest",
        {"metavar": "CSV", "help": "manifest CSV (path, patient_id, split, label|finding:*)"},
    ),
    ("--out", "out", {"metavar": "RUN_DIR", "help": "run folder for checkpoints, metrics and config"}),
    (
        "--positive-class",
        "positive_class",
        {
            "metavar": "NAME",
            "help": "two-class tasks: the positive class, stored in the checkpoint (default: the one "
            "recorded in the manifest, else the class not named normal/negative/healthy/benign/"
            "control/no finding/0; refused when the names do not tell)",
        },
    ),
    (
        "--allow-empty-class",
        "allow_empty_class",
        {
            "action": "store_true",
            "help": "train although a class has no training images (refused by default)",
        },
    ),
    ("--data-root", "data_root", {"metavar": "DIR", "help": "folder the manifest's paths are relative to"}),
    (
        "--allow-outside-root",
        "allow_outside_root",
        {
            "action": "store_true",
            "help": "accept manifest paths that leave the data root (absolute, '..', symlinks out); "
            "refused by default",
        },
    ),
    (
        "--weights",
        "weights",
        {
            "metavar": "PATH|NAME",
            "help": "pretrained weights: a local timm/torchvision state dict, .safetensors or medclass "
            "checkpoint, or a name, timm:inception_v3.tv_in1k / hf-hub:timm/inception_v3.tv_in1k, taken from "
            "the Hugging Face cache (downloaded into it once unless HF_HUB_OFFLINE=1)",
        },
    ),
    ("--epochs", "epochs", {"type": int}),
    ("--batch-size", "batch_size", {"type": int}),
    (
        "--image-size",
        "image_size",
        {"type": int, "help": "input side in px (default: the model's, 299); ≥ 75"},
    ),
    ("--lr", "lr", {"type": float, "help": "peak learning rate of the heads"}),
    ("--mode", "mode", {"choices": TRANSFER_MODE_NAMES}),
    ("--partial-blocks", "partial_blocks", {"type": int, "help": "partial mode: how many last blocks train"}),
    (
        "--aux-weight",
        "aux_weight",
        {"type": float, "help": "weight of the aux loss; 0 turns the aux head off"},
    ),
    ("--label-smoothing", "label_smoothing", {"type": float, "help": "multiclass cross-entropy smoothing"}),
    (
        "--optimizer",
        "optimizer",
        {"choices": ["adamw", "rmsprop"], "help": "rmsprop: decay 0.9, eps 1.0 (paper)"},
    ),
    ("--weight-decay", "weight_decay", {"type": float}),
    (
        "--warmup-epochs",
        "warmup_epochs",
        {"type": float, "help": "linear warmup, then cosine decay per step"},
    ),
    ("--grad-clip", "grad_clip", {"type": float, "help": "max gradient norm; 0 = off"}),
    (
        "--backbone-lr-scale",
        "backbone_lr_scale",
        {
            "type": float,
            "help": "full mode: backbone lr = lr × this (default 0.1 with --weights, 1.0 from scratch)",
        },
    ),
    (
        "--imbalance",
        "imbalance",
        {
            "choices": ["none", "weighted", "balanced"],
            "help": "weighted: class-weighted loss; balanced: class-balanced sampling",
        },
    ),
    ("--patience", "patience", {"type": int, "help": "early stopping: epochs without val AUC gain; 0 = off"}),
    (
        "--select",
        "select",
        {
            "choices": SELECTIONS,
            "help": "which epoch becomes 'best' (and what early stopping watches): auc = highest val AUC "
            "(first epoch of a tie); loss = lowest val NLL (the probabilities' quality); auc+loss = highest "
            "val AUC with ties, frequent on small validation sets, broken by the lower val NLL",
        },
    ),
    (
        "--ema",
        "ema",
        {
            "action": argparse.BooleanOptionalAction,
            "help": "keep an exponential moving average of the weights (timm ModelEmaV3), give it its own "
            "BatchNorm statistics, validate it each epoch and save it as 'best' (best.json says "
            "weights: ema; 'last' stays the raw weights; metrics.csv also shows the raw ones)",
        },
    ),
    ("--ema-decay", "ema_decay", {"type": float, "help": "EMA decay per step, warmed up from 0"}),
    (
        "--bn-batches",
        "bn_batches",
        {
            "type": int,
            "metavar": "N",
            "help": "before each validation and save, re-estimate the BatchNorm running statistics of the "
            "weights being saved over N un-augmented training batches (few steps from scratch leave them "
            "far from the weights' own: eval-mode logits explode); 0 = off, keep the running averages",
        },
    ),
    (
        "--calibration",
        "calibration",
        {
            "choices": CALIBRATION_METHODS,
            "help": "after training, fit the probability calibration of 'best' on the validation split and "
            "store it in best.json (auto: temperature, or platt/isotonic for two classes, or none, chosen by "
            "cross-fitted validation NLL; evaluate/score/explain/export apply it; see medclass calibrate)",
        },
    ),
    ("--seed", "seed", {"type": int}),
    ("--device", "device", {"choices": DEVICE_NAMES, "help": "auto: CUDA when present"}),
    ("--precision", "precision", {"choices": PRECISION_NAMES, "help": "bf16 autocast or plain fp32"}),
    (
        "--channels-last",
        "channels_last",
        {
            "action": argparse.BooleanOptionalAction,
            "help": "channels_last memory layout (1.4–1.7× faster on CPU)",
        },
    ),
    (
        "--cache",
        "cache",
        {
            "choices": CACHE_MODES,
            "help": "keep decoded images in memory, also on disk (reused by later runs), or not",
        },
    ),
    ("--cache-dir", "cache_dir", {"metavar": "DIR", "help": "disk cache folder (default RUN_DIR/cache)"}),
    (
        "--cache-dtype",
        "cache_dtype",
        {
            "choices": CACHE_DTYPES,
            "help": "storage type of cached images (16-bit halves the memory)",
        },
    ),
    (
        "--workers",
        "workers",
        {"type": int, "help": "decoding processes for the first pass (default min(2, cpus))"},
    ),
    ("--augment", "augment", {"action": argparse.BooleanOptionalAction, "help": "training augmentation"}),
    (
        "--hflip",
        "hflip",
        {
            "action": argparse.BooleanOptionalAction,
            "help": "random horizontal flips (off: laterality matters on chest X-rays)",
        },
    ),
    ("--window", "window", {"help": "intensity window policy passed to the preprocessor"}),
    ("--fit", "fit", {"help": "how images are fitted to the square input (preprocessor policy)"}),
    (
        "--tensorboard",
        "tensorboard",
        {
            "action": argparse.BooleanOptionalAction,
            "help": "also log to RUN_DIR/tensorboard (needs medclass[tracking])",
        },
    ),
    (
        "--profile",
        "profile",
        {
            "action": argparse.BooleanOptionalAction,
            "help": "at the end, fit the input gate's profile of the training data into 'best' (one more "
            "forward pass over the train and val images; see medclass profile)",
        },
    ),
    ("--progress", "progress", {"action": argparse.BooleanOptionalAction, "help": "progress bars"}),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="YAML", help="settings file (defaults ← this file ← options)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its 'last' checkpoint (same settings required)",
    )
    add_recipe_options(parser)


def add_recipe_options(parser: argparse.ArgumentParser | Any, skip: tuple[str, ...] = ()) -> None:
    """The training settings as options (those in ``skip``, by config name, left out); also used by `cv`."""
    from medclass.train.config import TrainConfig

    defaults = TrainConfig()
    for flag, name, kwargs in _OPTIONS:
        if name in skip:
            continue
        kwargs = dict(kwargs)
        default = getattr(defaults, name)
        text = kwargs.pop("help", "")
        if default not in (None, "") and kwargs.get("action") is None:
            text = f"{text} (default {default})".strip()
        elif isinstance(default, bool):
            text = f"{text} (default {'on' if default else 'off'})".strip()
        parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, help=text or None, **kwargs)


def flags_given(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the user typed (options not given are absent from ``args``)."""
    return {name: getattr(args, name) for _, name, _ in _OPTIONS if hasattr(args, name)}


def resolve(args: argparse.Namespace) -> Any:
    """The layered config for ``args``; with ``--resume`` and no ``--config``, RUN_DIR/config.yaml is the
    file layer. Raises :class:`ConfigError`."""
    from pathlib import Path

    from medclass.errors import ConfigError
    from medclass.train.config import resolve_config

    flags = flags_given(args)
    yaml_path = args.config
    if args.resume and yaml_path is None:
        if "out" not in flags:
            raise ConfigError("--resume needs --out RUN_DIR (the run to continue)")
        saved = Path(flags["out"]) / "config.yaml"
        if not saved.is_file():
            raise ConfigError("nothing to resume: no config.yaml in this run folder", Path(flags["out"]))
        yaml_path = saved
    return resolve_config(yaml_path, flags)


def run(args: argparse.Namespace) -> ExitCode:
    from medclass.train import train

    config = resolve(args)
    result = train(config, resume=args.resume)
    import os

    if int(os.environ.get("RANK", "0")) != 0:
        return ExitCode.OK
    _summary(result)
    return ExitCode.PARTIAL if result.skipped else ExitCode.OK


def _summary(result: Any) -> None:
    from rich.console import Console

    console = Console(stderr=False, highlight=False)
    auc = "n/a" if math.isnan(result.best_auc) else f"{result.best_auc:.4f}"
    how = "stopped early" if result.stopped_early else "finished"
    console.print(f"[bold]training {how}[/bold] after epoch {result.last_epoch}")
    console.print(f"  best epoch {result.best_epoch}: val AUC {auc}")
    console.print(f"  best checkpoint: {result.best}.safetensors (+ .json)")
    if result.calibration:
        console.print(f"  calibration of best: {result.calibration}", markup=False)
    console.print(f"  last checkpoint: {result.last}.safetensors (+ .json; last.state.* for --resume)")
    console.print(f"  metrics: {result.run_dir / 'metrics.csv'}   config: {result.run_dir / 'config.yaml'}")
    if result.skipped:
        console.print(f"[yellow]  {len(result.skipped)} image(s) skipped (unreadable):[/yellow]")
        for f in result.skipped[:10]:
            console.print(f"    {f.path}: {f.error}", markup=False)
        if len(result.skipped) > 10:
            console.print(f"    … and {len(result.skipped) - 10} more")
    sys.stdout.flush()
