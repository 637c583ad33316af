"""What a training run leaves in ``RUN_DIR``, and reading it back for ``--resume``.

::

    RUN_DIR/config.yaml        resolved settings + manifest sha256 + versions + seed
    RUN_DIR/metrics.csv        one row per epoch (rewritten atomically after each epoch)
    RUN_DIR/best.safetensors   weights of the epoch with the best val AUC  (+ best.json sidecar)
    RUN_DIR/last.safetensors   weights after the last finished epoch       (+ last.json sidecar)
    RUN_DIR/last.state.*       optimizer, scheduler, RNG and early-stopping state for --resume
    RUN_DIR/tensorboard/       optional event files

Only rank 0 calls the writers.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import torch

from medclass.errors import ConfigError
from medclass.fileio import write_csv

log = logging.getLogger(__name__)

METRIC_FIELDS = [
    "epoch",
    "lr",
    "train_loss",
    "train_main_loss",
    "train_aux_loss",
    "val_loss",
    "val_auc",
    "val_count",
    "val_saturated",
    "raw_val_loss",
    "raw_val_auc",
    "seconds",
    "img_per_s",
]


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.csv`` atomically with every epoch so far (a crash never leaves a torn file)."""
    write_csv(path, [{k: _fmt(r.get(k)) for k in METRIC_FIELDS} for r in rows], METRIC_FIELDS)


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return value


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of an existing ``metrics.csv`` (numbers parsed); empty when the file does not exist."""
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for r in rows:
        parsed: dict[str, Any] = {}
        for k, v in r.items():
            if k in ("epoch", "val_count", "val_saturated"):
                parsed[k] = int(v) if v not in ("", None) else None
            else:
                try:
                    parsed[k] = float(v)
                except (TypeError, ValueError):
                    parsed[k] = v
        out.append(parsed)
    return out


def tensorboard_writer(run_dir: Path) -> Any:
    """A TensorBoard ``SummaryWriter`` under ``RUN_DIR/tensorboard``.

    Raises :class:`ConfigError` when the ``tensorboard`` package is not installed.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "--tensorboard needs the tensorboard package: pip install 'medclass[tracking]'"
        ) from None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


class RunIO:
    """Writes and reads a run's checkpoints through :mod:`medclass.checkpoint` (rank 0 only).

    ``save_weights(name, ...)`` writes ``RUN_DIR/<name>.safetensors`` + ``.json`` with the metadata later
    stages need (classes, task, input spec, window, fit, manifest sha256, seed, versions, metrics);
    ``save_state`` writes the optimizer/scheduler/RNG/early-stopping state beside ``last``;
    ``restore`` loads both back and returns the number of finished epochs.
    """

    def __init__(self, config: Any, manifest: Any, spec: Any, preprocessor: Any) -> None:
        self.config = config
        self.manifest = manifest
        self.spec = spec
        self.preprocessor = preprocessor
        self.run_dir = Path(config.out)

    def meta(self, metrics: dict[str, Any], weights: str = "raw") -> dict[str, Any]:
        from dataclasses import asdict, is_dataclass

        spec = (
            asdict(self.spec)
            if is_dataclass(self.spec) and not isinstance(self.spec, type)
            else dict(vars(self.spec))
        )
        return {
            "architecture": self.config.model_name,
            "classes": list(self.manifest.classes),
            "task": str(self.manifest.task),
            "positive_class": getattr(self.manifest, "positive_class", None),
            "input": {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.items()},
            "window": self.config.window,
            "fit": self.config.fit,
            "aux_logits": True,
            "manifest_sha256": self.manifest.sha256,
            "seed": self.config.seed,
            "versions": _versions(),
            "metrics": {
                k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()
            },
            "train": {
                "mode": self.config.mode,
                "aux_weight": self.config.aux_weight,
                "epochs": self.config.epochs,
                "select": self.config.select,  # the criterion that chose 'best'
                "weights": weights,  # raw: the trained weights; ema: their moving average
                "ema_decay": self.config.ema_decay if self.config.ema else None,
                "bn_batches": self.config.bn_batches,
            },
        }

    def save_weights(
        self, name: str, model: torch.nn.Module, metrics: dict[str, Any], weights: str = "raw"
    ) -> Path:
        from medclass import checkpoint

        stem = self.run_dir / name
        checkpoint.save(stem, model, self.meta(metrics, weights))
        return stem

    def save_state(self, optimizer: Any, scheduler: Any, tracker: Any, epoch: int, ema: Any = None) -> None:
        """Optimizer, scheduler, RNG, early-stopping and weight-average state beside ``last``
        (``last.state.*``)."""
        from medclass import checkpoint

        extra: dict[str, Any] = {"tracker": tracker.state()}
        if ema is not None:
            extra["ema"] = ema.state()
        checkpoint.save_training_state(self.run_dir / "last", optimizer, scheduler, epoch=epoch, extra=extra)

    def restore(
        self, model: torch.nn.Module, optimizer: Any, scheduler: Any, tracker: Any, ema: Any = None
    ) -> int:
        """Load ``last`` weights and training state into the given objects; returns finished epochs.

        Raises :class:`~medclass.errors.CheckpointError` when they are missing, corrupt or do not fit.
        """
        from medclass import checkpoint

        stem = self.run_dir / "last"
        state, _ = checkpoint.read_state_dict(stem)
        model.load_state_dict(state, strict=True)
        saved = checkpoint.load_training_state(stem, optimizer, scheduler)
        tracker.load(saved.extra["tracker"])
        if ema is not None:
            if "ema" not in saved.extra:
                raise ConfigError("this run was trained without --ema; resume it without --ema", stem)
            ema.load(saved.extra["ema"])
        return int(saved.epoch)


def _versions() -> dict[str, str]:
    from medclass.train.config import versions

    return versions()


class EpochBar:
    """A tqdm bar over one epoch's batches showing the running loss and the last val AUC (or nothing)."""

    def __init__(self, desc: str, total: int, last_auc: float, enabled: bool) -> None:
        self.desc = desc
        self.total = total
        self.last_auc = last_auc
        self.enabled = enabled
        self._bar: Any = None

    def wrap(self, iterable: Any) -> Any:
        if not self.enabled:
            return iterable
        from tqdm import tqdm

        self._bar = tqdm(
            iterable, desc=self.desc, total=self.total, unit="batch", leave=False, dynamic_ncols=True
        )
        self._postfix(float("nan"))
        return self._bar

    def _postfix(self, loss: float) -> None:
        if self._bar is not None:
            auc = "-" if math.isnan(self.last_auc) else f"{self.last_auc:.3f}"
            running = "-" if math.isnan(loss) else f"{loss:.4f}"  # not yet measured this epoch
            self._bar.set_postfix_str(f"loss {running} val AUC {auc}", refresh=False)

    def loss(self, step: int, running: float) -> None:
        self._postfix(running)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
