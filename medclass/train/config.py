"""Training configuration: one typed dataclass, layered defaults ← YAML file ← command-line flags.

The resolved configuration is written to ``RUN_DIR/config.yaml`` together with the manifest's sha256,
the package versions and the seed (no host name, no user name), so that every run can be repeated and
``--resume`` can check that it continues the same run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from medclass.errors import ConfigError, look_up
from medclass.names import (
    ARCHITECTURE,
    CACHE_DTYPES,
    CACHE_MODES,
    CALIBRATION_METHODS,
    DEVICE_NAMES,
    PRECISION_NAMES,
    TRANSFER_MODE_NAMES,
)

# Valid values of the settings that pick one of a few behaviours (name → description).
MODES = TRANSFER_MODE_NAMES
OPTIMIZERS = ("adamw", "rmsprop")
IMBALANCE = ("none", "weighted", "balanced")
DEVICES = DEVICE_NAMES
PRECISIONS = PRECISION_NAMES
CACHES = CACHE_MODES
SELECTIONS = ("auc", "loss", "auc+loss")

# Settings that must not change between a run and its --resume (the rest may, e.g. epochs, workers).
RESUME_FIXED = (
    "image_size",
    "batch_size",
    "lr",
    "mode",
    "partial_blocks",
    "aux_weight",
    "label_smoothing",
    "optimizer",
    "weight_decay",
    "warmup_epochs",
    "backbone_lr_scale",
    "imbalance",
    "seed",
    "augment",
    "hflip",
    "window",
    "fit",
    "select",
    "ema",
    "ema_decay",
)


@dataclass
class TrainConfig:
    """Everything a training run depends on. Paths are kept as given (strings in YAML)."""

    manifest: str = ""
    out: str = ""
    data_root: str | None = None
    allow_outside_root: bool = False  # accept manifest paths that leave data_root (refused by default)
    weights: str | None = None  # local file or timm:/hf-hub: name; None = random init
    positive_class: str | None = None  # two-class tasks; None = recorded in the manifest, else by name
    allow_empty_class: bool = False  # train although a class has no training images
    model_name: str = ARCHITECTURE
    epochs: int = 20
    batch_size: int = 32
    image_size: int | None = None  # None = the model's own input size (299 for Inception V3)
    lr: float = 1e-3
    mode: str = "full"  # linear | partial | full
    partial_blocks: int = 3  # partial: how many of the last Inception blocks train (Mixed_7a/b/c)
    aux_weight: float = 0.4  # 0 turns the auxiliary head off
    label_smoothing: float = 0.1  # multiclass only
    optimizer: str = "adamw"  # adamw | rmsprop (Inception V3 paper: decay 0.9, eps 1.0)
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01  # cosine schedule ends at lr × this
    grad_clip: float = 2.0  # max global grad norm; 0 = off
    # full mode: backbone lr = lr × this; None = 0.1 with --weights (fine-tuning), 1.0 from scratch
    backbone_lr_scale: float | None = None
    imbalance: str = "none"  # none | weighted (loss weights) | balanced (WeightedRandomSampler)
    patience: int = 5  # early stopping on val AUC; 0 = off
    select: str = "auc+loss"  # best epoch by: auc | loss (val NLL) | auc+loss (AUC, ties by NLL)
    ema: bool = False  # validate, select and save an EMA of the weights (best holds it)
    ema_decay: float = 0.999  # EMA decay per step (warmed up from 0 over the first steps)
    bn_batches: int = 32  # re-estimate BatchNorm statistics over this many train batches; 0 = off
    calibration: str = "auto"  # fitted on val for 'best' after training (medclass.calibrate); none = off
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "bf16"  # bf16 autocast | fp32
    channels_last: bool = True
    cache: str = "memory"  # memory | disk | none
    cache_dir: str | None = None  # disk cache folder (default RUN_DIR/cache)
    cache_dtype: str = "float32"  # float16/bfloat16 halve the cache's memory
    workers: int | None = None  # decoding processes for the first pass; None = min(2, cpus)
    augment: bool = True
    hflip: bool = False  # off: laterality matters on chest X-rays
    rotate: float = 7.0  # degrees, ±
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05  # fraction of the image, ±
    brightness: float = 0.1  # ± of the 0..1 intensity range
    contrast: float = 0.1  # ± relative
    window: str = "auto"  # Preprocessor window policy
    fit: str = "letterbox"  # Preprocessor fit policy
    tensorboard: bool = False
    profile: bool = True  # fit the input gate's training-data profile into 'best' (medclass.gate)
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # recorded, never interpreted

    def validate(self) -> TrainConfig:
        """Check values; returns ``self``. Raises :class:`ConfigError` naming the bad setting."""
        _choice("mode", self.mode, MODES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("imbalance", self.imbalance, IMBALANCE)
        _choice("device", self.device, DEVICES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("cache", self.cache, CACHES)
        _choice("cache_dtype", self.cache_dtype, CACHE_DTYPES)
        _choice("select", self.select, SELECTIONS)
        _choice("calibration", self.calibration, CALIBRATION_METHODS)
        if not 0 < self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if not self.manifest:
            raise ConfigError("manifest is required (--manifest or 'manifest:' in the config file)")
        if not self.out:
            raise ConfigError("out is required (--out RUN_DIR or 'out:' in the config file)")
        _positive("epochs", self.epochs)
        _positive("batch_size", self.batch_size)
        if self.image_size is not None and not 75 <= self.image_size <= 1024:
            raise ConfigError(f"image_size must be between 75 and 1024, got {self.image_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        for name in ("aux_weight", "weight_decay", "warmup_epochs", "grad_clip", "min_lr_ratio"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be ≥ 0, got {value}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.backbone_lr_scale is not None and not 0 < self.backbone_lr_scale <= 1:
            raise ConfigError(f"backbone_lr_scale must be in (0, 1], got {self.backbone_lr_scale}")
        if self.partial_blocks < 1:
            raise ConfigError(f"partial_blocks must be ≥ 1, got {self.partial_blocks}")
        if self.bn_batches < 0:
            raise ConfigError(f"bn_batches must be ≥ 0, got {self.bn_batches}")
        if self.patience < 0:
            raise ConfigError(f"patience must be ≥ 0, got {self.patience}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"workers must be ≥ 0, got {self.workers}")
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ConfigError(f"scale must be two numbers 0 < low ≤ high, got {self.scale}")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.out)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["scale"] = list(self.scale)
        return d


def valid_keys() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    look_up(valid, value, name)


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{name} must be ≥ 1, got {value}")


def _coerce(name: str, value: Any, hint: Any, source: str) -> Any:
    """Convert a YAML value to the field's type, or raise ConfigError naming the setting."""
    text = str(hint)
    if value is None:
        if "None" in text:
            return None
        raise ConfigError(f"{name} may not be empty", source)
    try:
        if name == "scale":
            lo, hi = (float(v) for v in value)
            return (lo, hi)
        if name == "extra":
            if not isinstance(value, dict):
                raise TypeError
            return dict(value)
        if text.startswith("bool") or hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in (
                "true",
                "yes",
                "on",
                "1",
                "false",
                "no",
                "off",
                "0",
            ):
                return value.lower() in ("true", "yes", "on", "1")
            raise TypeError
        if text.startswith("int") or hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if text.startswith("float") or hint is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if text.startswith("str") or hint is str:
            if isinstance(value, (dict, list)):
                raise TypeError
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a valid {text}", source) from None
    return value


def apply_overrides(config: TrainConfig, values: Mapping[str, Any], source: str = "") -> TrainConfig:
    """Return a copy of ``config`` with ``values`` applied (keys are field names, ``-`` allowed for ``_``).

    Raises :class:`ConfigError` for unknown keys (listing the valid ones) and for values of the wrong
    type. ``source`` names where the values came from (a YAML file) for the message.
    """
    hints = get_type_hints(TrainConfig)
    known = set(valid_keys())
    changes: dict[str, Any] = {}
    unknown = []
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in known:
            unknown.append(str(key))
            continue
        changes[name] = _coerce(name, value, hints[name], source)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(sorted(unknown))}; valid keys: {', '.join(valid_keys())}",
            source or None,
        )
    return dataclasses.replace(config, **changes)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of settings. Raises :class:`ConfigError` if unreadable or not a mapping."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror or exc}", path) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {str(exc).splitlines()[0]}", path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of settings, got {type(data).__name__}", path)
    # A saved RUN_DIR/config.yaml nests the settings under 'config' beside provenance: accept it.
    if "config" in data and isinstance(data["config"], dict) and "versions" in data:
        data = data["config"]
    return data


def resolve_config(
    yaml_path: str | Path | None = None, flags: Mapping[str, Any] | None = None
) -> TrainConfig:
    """Layer defaults ← YAML file ← flags (only the flags the user actually gave) and validate.

    Raises :class:`ConfigError` for unknown keys, wrong types or invalid values.
    """
    config = TrainConfig()
    if yaml_path is not None:
        config = apply_overrides(config, load_yaml(yaml_path), source=str(yaml_path))
    if flags:
        config = apply_overrides(config, flags, source="command line")
    return config.validate()


def versions() -> dict[str, str]:
    """Versions of the packages a run's result depends on."""
    import sys

    import timm
    import torch

    from medclass import __version__

    return {
        "medclass": __version__,
        "torch": str(torch.__version__),
        "timm": str(timm.__version__),
        "python": sys.version.split()[0],
    }


def save_config(config: TrainConfig, path: str | Path, *, manifest_sha256: str, **extra: Any) -> None:
    """Write the resolved config with provenance (manifest hash, versions, seed) atomically as YAML."""
    import yaml

    from medclass.fileio import atomic_write_text

    doc = {
        "config": config.to_dict(),
        "manifest_sha256": manifest_sha256,
        "seed": config.seed,
        "versions": versions(),
        **extra,
    }
    atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))


def read_saved(path: str | Path) -> dict[str, Any]:
    """Read a RUN_DIR/config.yaml written by :func:`save_config`. Raises ConfigError if malformed."""
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the saved run config: {exc}", path) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise ConfigError("not a medclass run config (no 'config' mapping)", path)
    return doc


def check_resumable(saved: Mapping[str, Any], config: TrainConfig, manifest_sha256: str, path: Path) -> None:
    """Raise :class:`ConfigError` if ``config`` differs from the saved run in a setting that matters."""
    if saved.get("manifest_sha256") != manifest_sha256:
        raise ConfigError(
            f"the manifest changed since this run started (sha256 {str(saved.get('manifest_sha256'))[:12]}… "
            f"→ {manifest_sha256[:12]}…); start a new run with another --out",
            path,
        )
    old = saved["config"]
    now = config.to_dict()
    diffs = [
        f"{k}: {old.get(k)!r} → {now[k]!r}"
        for k in RESUME_FIXED
        if k in old and _norm(old[k]) != _norm(now[k])
    ]
    if diffs:
        raise ConfigError(
            f"--resume needs the same settings as the interrupted run; changed {'; '.join(diffs)}", path
        )


def _norm(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [float(v) for v in value]
    return value
