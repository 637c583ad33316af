"""One scoring run: checkpoint → inputs → rows (on an engine) → merged output → study summary.

:func:`run_scoring` wires the parts: the checkpoint's meta (classes, task, input spec, window, fit,
operating point, weights sha256) or an exported ONNX model's sidecar, the work items
(:mod:`~medclass.score.inputs`), what is already done (``--resume``), the engine that turns the rest into
rows, and the files (:mod:`~medclass.score.writer`). Engines are a name → callable table
(:data:`ENGINES`): ``local`` runs the loop of :mod:`~medclass.score.pipeline` in this process with decode
workers; ``ray`` runs the same decode and batch-scoring functions as Ray Data stages on a cluster
(:mod:`~medclass.score.ray_engine`). Both end in the same merge, which checks that every input has
exactly one row.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medclass.errors import CheckpointError, ConfigError
from medclass.score.decide import DecisionRule
from medclass.score.inputs import WorkItem, expand_inputs
from medclass.score.pipeline import Counts, default_workers, score_items
from medclass.score.summary import write_summary
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
    engine: str = "local"  # see ENGINES
    ray_address: str | None = None  # None: a Ray cluster on this machine, started for the run
    actors: int | None = None  # model replicas on the Ray engine; None: one per GPU, else one


@dataclass
class ScoreReport:
    """What happened: this run's counts and where the rows went."""

    counts: Counts
    out: Path
    n_items: int
    summary: Path | None = None
    n_studies: int = 0
    failed_in_output: int = 0  # error rows in the whole output (earlier runs included)
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScoreJob:
    """What an engine is handed: the items still to score and everything needed to score them.

    An engine writes every item's row through ``output`` (the row log, or the idempotent
    :meth:`~medclass.score.writer.ScoreOutput.sink`), calls ``progress(n)`` as rows are committed and
    returns the :class:`Counts` of this run plus the settings it used (for the log and the report).
    """

    config: ScoreConfig
    meta: dict[str, Any]
    model: Any  # the torch model (torch backend), else None
    rule: DecisionRule
    todo: list[WorkItem]
    output: ScoreOutput
    progress: Callable[[int], None] | None = None

    @property
    def model_sha256(self) -> str:
        return str(self.meta.get("sha256", ""))

    def min_size(self) -> int | None:
        return decode_min_size(self.config.fast_decode, int(self.meta["input"]["size"]))


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


def _threads(config: ScoreConfig, workers: int) -> int:
    """Model threads: as given, else the cores (less the workers beyond one per core).

    A decode worker sleeps whenever the prefetch window is full, so the workers use the cores while the
    model waits for a batch and leave them to it while it runs: giving the model every core and letting
    the OS share them keeps both busy (on 2 cores, 2 threads + 2 workers beat 1 + 2 and 2 + 1). Workers
    themselves run torch with one thread.
    """
    if config.threads:
        return int(config.threads)
    cpus = os.cpu_count() or 1
    return max(1, cpus - max(0, workers - cpus))


def build_backend(config: ScoreConfig, task: str, model: Any, device: str, threads: int) -> Any:
    """The inference backend of ``config`` (see :func:`~medclass.score.backends.make_backend`); loads the
    checkpoint's model when ``model`` is None and the backend is torch (a Ray actor does that)."""
    from medclass.score.backends import make_backend

    if model is None and config.backend == "torch":
        model = load_meta(config)[1]
    return make_backend(
        config.backend, task=task, model=model, onnx_path=config.onnx, device=device,
        precision=config.precision, threads=threads,
    )  # fmt: skip


def local_engine(job: ScoreJob) -> tuple[Counts, dict[str, Any]]:
    """Decode in worker processes of this machine, overlapped with batched inference here; rows appended
    to the output batch by batch (see :func:`~medclass.score.pipeline.score_items`)."""
    import torch

    from medclass.score.backends import pick_device

    config = job.config
    workers = default_workers() if config.workers is None else max(0, int(config.workers))
    workers = min(workers, len(job.todo))
    device = pick_device(config.device)
    threads = _threads(config, workers)
    torch.set_num_threads(threads)
    backend = build_backend(config, job.rule.task, job.model, device, threads)
    settings = dict(device=device, workers=workers, threads=threads)
    log.info("local engine: %s", ", ".join(f"{k}={v}" for k, v in settings.items()))
    job.output.open()
    try:
        counts = score_items(
            job.todo, backend=backend, preprocessor=make_preprocessor(job.meta), append=job.output.append,
            rule=job.rule, model_sha256=job.model_sha256, batch_size=config.batch_size, workers=workers,
            progress=job.progress, min_size=job.min_size(),
        )  # fmt: skip
    finally:
        job.output.close()
    return counts, settings


def ray_engine(job: ScoreJob) -> tuple[Counts, dict[str, Any]]:
    """Decode as Ray tasks and score in a pool of model actors (see :mod:`~medclass.score.ray_engine`)."""
    from medclass.score.ray_engine import run_on_ray

    return run_on_ray(job)


#: engine name → what scores a :class:`ScoreJob` (``--engine``)
ENGINES: dict[str, Callable[[ScoreJob], tuple[Counts, dict[str, Any]]]] = {
    "local": local_engine,
    "ray": ray_engine,
}


def run_scoring(
    config: ScoreConfig, progress: Callable[[int, int], Callable[[int], None]] | None = None
) -> ScoreReport:
    """Score ``config.paths`` into ``config.out``. ``progress(total, done)`` may return an update callback.

    Returns a :class:`ScoreReport`. Raises :class:`ConfigError`/:class:`CheckpointError`/
    :class:`~medclass.errors.ManifestError` before anything is written for bad settings, an output that
    exists without ``resume``/``overwrite``, or rows of another model in the output;
    :class:`~medclass.errors.EngineError` when the engine fails or leaves an input without its row (the
    rows written so far are kept for ``--resume``); bad images never raise.
    """
    if config.batch_size < 1:
        raise ConfigError(f"--batch-size must be ≥ 1, got {config.batch_size}")
    if config.engine not in ENGINES:
        raise ConfigError(f"unknown engine {config.engine!r}; valid: {', '.join(ENGINES)}")
    if config.engine != "ray" and (config.ray_address or config.actors):
        raise ConfigError("--ray-address and --actors are for --engine ray")
    meta, model = load_meta(config)
    rule = DecisionRule.from_meta(meta)
    out = Path(config.out)
    fmt = output_format(out, config.format)
    output = ScoreOutput(out, fmt, score_columns(rule.classes))
    output.check(resume=config.resume, overwrite=config.overwrite)
    if config.overwrite:
        output.clear()

    items = expand_inputs(
        config.paths,
        slice_policy=config.slice_policy,
        data_root=config.data_root,
        allow_outside_root=config.allow_outside_root,
    )
    if not items:
        raise ConfigError(f"no images found in {', '.join(map(str, config.paths))}")
    done = output.done_rows(str(meta.get("sha256", ""))) if config.resume else {}
    todo = [i for i in items if i.key not in done]
    log.info(
        "%d inputs, %d already done; engine=%s backend=%s precision=%s batch_size=%d format=%s fast_decode=%s",
        len(items), len(items) - len(todo), config.engine, config.backend, config.precision,
        config.batch_size, fmt, config.fast_decode,
    )  # fmt: skip
    update = progress(len(items), len(items) - len(todo)) if progress is not None else None
    job = ScoreJob(config, meta, model, rule, todo, output, update)
    counts, used = ENGINES[config.engine](job) if todo else (Counts(), {})
    counts.skipped = len(items) - len(todo)
    settings = dict(
        engine=config.engine, backend=config.backend, precision=config.precision,
        batch_size=config.batch_size, format=fmt, fast_decode=config.fast_decode, **used,
    )  # fmt: skip
    report = ScoreReport(counts, out, len(items), settings=settings)
    rows = output.finalize([i.key for i in items])
    report.failed_in_output = sum(1 for r in rows if r.get("error"))
    report.summary, report.n_studies = write_summary(out, rows, rule, config.aggregate)
    return report
