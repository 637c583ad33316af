"""Data-parallel training under ``torchrun``: process group, device, DDP wrapper, gathering predictions.

``medclass train`` is the same command alone or under ``torchrun --nproc-per-node N -m medclass.cli
train ...``: the ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` variables that torchrun sets switch this module
on. Backend: NCCL on CUDA, gloo on CPU. Only rank 0 writes files; validation predictions are gathered
from every rank and de-duplicated by sample index, so each validation image counts exactly once even
though :class:`~torch.utils.data.distributed.DistributedSampler` pads the last shard with repeats.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from medclass.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, its ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` → CUDA when present, else CPU. Raises :class:`ConfigError` for ``cuda`` without a GPU."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError(
                "device 'cuda' asked for but no CUDA GPU is available; use --device cpu or auto"
            )
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    if preference not in ("auto", "cpu"):
        raise ConfigError(f"device must be auto, cpu or cuda; got {preference!r}")
    return torch.device("cpu")


def setup(preference: str = "auto") -> DistContext:
    """Initialise the process group when launched by torchrun; returns this process's context.

    On CPU with several ranks, each rank gets ``cpus // world_size`` threads (at least 1) so that ranks
    do not fight over the cores.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(preference, local_rank)
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            kwargs: dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(minutes=30)}
            if device.type == "cuda":
                kwargs["device_id"] = device
            dist.init_process_group(**kwargs)
        if device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        log.info("rank %d/%d on %s (%s backend)", rank, world, device, backend)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device)


def wrap(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` when running distributed, else ``model`` itself."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (or ``model``)."""
    return getattr(model, "module", model)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def broadcast_object(value: Any, ctx: DistContext) -> Any:
    """Rank 0's ``value`` on every rank (e.g. an early-stopping decision)."""
    if not ctx.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Element-wise sum of ``values`` over ranks (float64)."""
    if not ctx.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.cpu().tolist()


def gather_predictions(
    indices: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor, losses: torch.Tensor, ctx: DistContext
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge every rank's validation outputs; each sample index kept once, in index order.

    ``indices`` (N,) are dataset positions, ``scores`` (N, C) probabilities, ``targets`` (N,) or (N, C),
    ``losses`` (N,) per-sample loss. Returns ``(scores, targets, losses)`` over the unique indices.
    """
    parts = [(indices.cpu(), scores.cpu(), targets.cpu(), losses.cpu())]
    if ctx.enabled:
        gathered: list[Any] = [None] * ctx.world_size
        dist.all_gather_object(gathered, parts[0])
        parts = gathered
    idx = torch.cat([p[0] for p in parts])
    sc = torch.cat([p[1] for p in parts])
    tg = torch.cat([p[2] for p in parts])
    ls = torch.cat([p[3] for p in parts])
    # DistributedSampler pads with repeats of the first indices: keep the first copy of each index.
    order = torch.argsort(idx, stable=True)
    idx, sc, tg, ls = idx[order], sc[order], tg[order], ls[order]
    keep = torch.ones_like(idx, dtype=torch.bool)
    keep[1:] = idx[1:] != idx[:-1]
    return sc[keep], tg[keep], ls[keep]


def cleanup(ctx: DistContext) -> None:
    """Tear the process group down (safe to call when not distributed)."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
