"""The training stage: fine-tune Inception V3 with its auxiliary head.

- :mod:`.config`: :class:`TrainConfig` (typed, layered defaults ← YAML ← flags, saved with the run).
- :mod:`.loop`: :func:`train` — the epoch loop, validation, checkpoints, resume.
- :mod:`.steps`: :class:`StepRunner` — one optimiser step per batch (what the benchmark times).
- :mod:`.objective`: the main + aux loss, imbalance handling, the seeded sampler, validation AUC.
- :mod:`.augment`: mild radiology augmentation on batches of cached tensors.
- :mod:`.distributed`: torchrun / DDP support.
"""

from __future__ import annotations

from typing import Any

from medclass.train.config import TrainConfig, resolve_config

__all__ = ["TrainConfig", "TrainResult", "resolve_config", "train"]


def __getattr__(name: str) -> Any:
    # The loop imports torch and timm: loaded on first use so that `medclass train --help` stays fast.
    if name in ("train", "TrainResult"):
        from medclass.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'medclass.train' has no attribute {name!r}")
