"""One scoring run, alone or as one rank under ``torchrun``: checkpoint → inputs → rows → summary.

:func:`run_scoring` wires the parts: the checkpoint's meta (classes, task, input spec, window, fit,
operating point, weights sha256) or an exported ONNX model's sidecar, the work items
(:mod:`~medclass.score.inputs`), the backend (:mod:`~medclass.score.backends`), the loop
(:mod:`~medclass.score.pipeline`) and the files (:mod:`~medclass.score.writer`). Under torchrun
(``WORLD_SIZE`` > 1) item ``i`` of the ordered list goes to rank ``i % world_size``; each rank writes
``<out>.rank<k>``; after a gloo barrier rank 0 merges the parts and writes the study summary.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medclass.errors import CheckpointError, ConfigError
from medclass.score.decide import DecisionRule
from medclass.score.inputs import expand_inputs, shard
from medclass.score.pipeline import Counts, default_workers, score_items
from medclass.score.writer import ScoreOutput, score_columns

log = logging.getLogger(__name__)

META_KEYS = ("classes", "task", "input", "window", "fit")


@dataclass
class ScoreConfig:
    """Everything a scoring run needs (the CLI's flags)."""

    paths: Sequence[str | os.PathLike[str]]
    out: Path
    checkpoint: Path | None = None
    format: str | None = None  # None: from the suffix of ``out`` (csv when unknown)
    workers: int | None = None  # None: default_workers()
    batch_size: int = 32
    resume: bool = False
    overwrite: bool = False
    backend: str = "torch"
    onnx: Path | None = None
    precision: str = "fp32"
    device: str = "auto"
    slice_policy: str = "all"
    data_root: Path | None = None
    allow_outside_root: bool = False  # manifests among paths may point outside data_root
    aggregate: str = "mean"
    threads: int | None = None  # torch intra-op threads in this process; None: see _threads()
    # JPEG inputs decoded at 1/2..1/8 scale in the DCT domain (sides kept ≥ 2 × the model input): ~2× less
    # decode + resize work per radiograph, probabilities within ~0.02 of the exact path (not identical to
    # what `evaluate` computes, hence opt-in)
    fast_decode: bool = False


@dataclass
class ScoreReport:
    """What happened: this run's counts (summed over ranks on rank 0) and where the rows went."""

    counts: Counts
    out: Path
    n_items: int
    rank: int = 0
    world_size: int = 1
    summary: Path | None = None
    n_studies: int = 0
    failed_in_output: int = 0  # error rows in the whole output (earlier runs included), rank 0 only
    settings: dict[str, Any] = field(default_factory=dict)


def output_format(out: Path, given: str | None) -> str:
    if given:
        return given
    suffix = out.suffix.lower().lstrip(".")
    return suffix if suffix in ("csv", "jsonl", "parquet") else "csv"


def load_meta(config: ScoreConfig) -> tuple[dict[str, Any], Any]:
    """The model's meta and, for the torch backend, the model. Raises :class:`CheckpointError` /
    :class:`ConfigError` for a missing checkpoint, an ONNX file exported from other weights, or neither.
    """
    from medclass import checkpoint as checkpoints

    onnx_meta = None
    if config.backend == "onnxruntime" and config.onnx is not None:
        from medclass.export import read_sidecar

        onnx_meta = read_sidecar(config.onnx)
    if config.checkpoint is None:
        if onnx_meta is None:
            raise ConfigError("--checkpoint is required (or --backend onnxruntime --onnx MODEL.onnx)")
        return onnx_meta, None
    if config.backend == "torch":
        ckpt = checkpoints.load(config.checkpoint)
        meta, model = dict(ckpt.meta), ckpt.model
    else:
        from medclass.weights import read_meta

        meta, model = read_meta(config.checkpoint), None
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise CheckpointError(
            f"checkpoint meta lacks {', '.join(missing)}; it cannot be scored", config.checkpoint
        )
    if onnx_meta is not None and onnx_meta.get("sha256") != meta.get("sha256"):
        raise ConfigError(
            f"was exported from other weights (sha256 {str(onnx_meta.get('sha256'))[:12]}…) than "
            f"--checkpoint ({str(meta.get('sha256'))[:12]}…); export it again",
            config.onnx,
        )
    return meta, model


def make_preprocessor(meta: dict[str, Any]) -> Any:
    from medclass.preprocess import Preprocessor

    return Preprocessor.from_meta(meta)


def decode_min_size(fast_decode: bool, input_size: int) -> int | None:
    """The reader's ``min_size`` hint for ``--fast-decode``: 2× the model input (at 1× the drift from the
    exact path was 5× larger on the Kermany radiographs: max |Δprob| 0.082 against 0.016); None without."""
    return 2 * input_size if fast_decode else None


def _threads(config: ScoreConfig, workers: int, world_size: int) -> int:
    """Model threads: as given, else this rank's cores (less the workers beyond one per core).

    A decode worker sleeps whenever the prefetch window is full, so the workers use the cores while the
    model waits for a batch and leave them to it while it runs: giving the model every core and letting
    the OS share them keeps both busy (on 2 cores, 2 threads + 2 workers beat 1 + 2 and 2 + 1). Workers
    themselves run torch with one thread.
    """
    if config.threads:
        return int(config.threads)
    cpus = os.cpu_count() or 1
    per_rank = max(1, cpus // world_size)
    return max(1, per_rank - max(0, workers - per_rank))


class _Dist:
    """torchrun's process group (gloo), or nothing for one process."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1
        if self.enabled:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo", timeout=datetime.timedelta(hours=12))

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def sum(self, values: list[int]) -> list[int]:
        if not self.enabled:
            return values
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.int64)
        dist.all_reduce(t)
        return [int(v) for v in t.tolist()]

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def run_scoring(
    config: ScoreConfig, progress: Callable[[int, int], Callable[[int], None]] | None = None
) -> ScoreReport:
    """Score ``config.paths`` into ``config.out``. ``progress(total, done)`` may return an update callback.

    Returns a :class:`ScoreReport`. Raises :class:`ConfigError`/:class:`CheckpointError`/
    :class:`~medclass.errors.ManifestError` before anything is written for bad settings, an output that
    exists without ``resume``/``overwrite``, or rows of another model in the output; bad images never raise.
    """
    dist = _Dist()
    try:
        return _run(config, dist, progress)
    finally:
        dist.close()


def _run(
    config: ScoreConfig, dist: _Dist, progress: Callable[[int, int], Callable[[int], None]] | None
) -> ScoreReport:
    from medclass.score.backends import make_backend, pick_device
    from medclass.score.summary import write_summary

    if config.batch_size < 1:
        raise ConfigError(f"--batch-size must be ≥ 1, got {config.batch_size}")
    meta, model = load_meta(config)
    rule = DecisionRule.from_meta(meta)
    model_sha = str(meta.get("sha256", ""))
    out = Path(config.out)
    fmt = output_format(out, config.format)
    output = ScoreOutput(out, fmt, score_columns(rule.classes), rank=dist.rank, world_size=dist.world_size)
    output.check(resume=config.resume, overwrite=config.overwrite)
    dist.barrier()
    if config.overwrite and dist.rank == 0:
        output.clear()
    dist.barrier()

    items = expand_inputs(
        config.paths,
        slice_policy=config.slice_policy,
        data_root=config.data_root,
        allow_outside_root=config.allow_outside_root,
    )
    if not items:
        raise ConfigError(f"no images found in {', '.join(map(str, config.paths))}")
    mine = shard(items, dist.rank, dist.world_size)
    done = output.done_rows(model_sha) if config.resume else {}
    dist.barrier()
    todo = [i for i in mine if i.key not in done]
    workers = default_workers(dist.world_size) if config.workers is None else max(0, int(config.workers))
    workers = min(workers, max(len(todo), 0))
    device = pick_device(config.device, dist.local_rank)
    threads = _threads(config, workers, dist.world_size)
    import torch

    torch.set_num_threads(threads)
    backend = make_backend(
        config.backend, task=rule.task, model=model, onnx_path=config.onnx, device=device,
        precision=config.precision, threads=threads,
    )  # fmt: skip
    preprocessor = make_preprocessor(meta)
    min_size = decode_min_size(config.fast_decode, preprocessor.spec.size)
    settings = dict(
        backend=config.backend, device=device, precision=config.precision, batch_size=config.batch_size,
        workers=workers, threads=threads, format=fmt, fast_decode=config.fast_decode,
    )  # fmt: skip
    log.info(
        "rank %d/%d: %d of %d inputs here, %d already done; %s",
        dist.rank, dist.world_size, len(mine), len(items), len(mine) - len(todo),
        ", ".join(f"{k}={v}" for k, v in settings.items()),
    )  # fmt: skip
    update = progress(len(mine), len(mine) - len(todo)) if progress is not None else None
    output.open()
    try:
        counts = score_items(
            todo, backend=backend, preprocessor=preprocessor, append=output.append, rule=rule,
            model_sha256=model_sha, batch_size=config.batch_size, workers=workers, progress=update,
            min_size=min_size,
        )  # fmt: skip
    finally:
        output.close()
    counts.skipped = len(mine) - len(todo)
    report = ScoreReport(counts, out, len(items), dist.rank, dist.world_size, settings=settings)
    dist.barrier()
    total = dist.sum([counts.scored, counts.failed, counts.skipped])
    if dist.rank == 0:
        rows = output.finalize([i.key for i in items])
        report.counts = Counts(total[0], total[1], total[2], counts.errors)
        report.failed_in_output = sum(1 for r in rows if r.get("error"))
        report.summary, report.n_studies = write_summary(out, rows, rule, config.aggregate)
    dist.barrier()
    return report
