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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medclass.errors import ConfigError, look_up
from medclass.names import GATE_MODES, REFUSED
from medclass.score.decide import DecisionRule
from medclass.score.inputs import expand_inputs
from medclass.score.job import (
    ScoreConfig,
    ScoreJob,
    build_backend,
    decode_min_size,
    load_meta,
    make_gate,
    make_preprocessor,
    output_format,
)
from medclass.score.pipeline import Counts, default_workers, score_items
from medclass.score.summary import write_summary
from medclass.score.writer import ScoreOutput, score_columns

log = logging.getLogger(__name__)

__all__ = [
    "ENGINES",
    "ScoreConfig",
    "ScoreJob",
    "ScoreReport",
    "build_backend",
    "decode_min_size",
    "load_meta",
    "local_engine",
    "make_gate",
    "make_preprocessor",
    "run_scoring",
]


@dataclass
class ScoreReport:
    """What happened: this run's counts and where the rows went."""

    counts: Counts
    out: Path
    n_items: int
    summary: Path | None = None
    n_studies: int = 0
    failed_in_output: int = 0  # error rows in the whole output (earlier runs included)
    flagged_in_output: int = 0  # rows the input gate put out of scope (earlier runs included)
    refused_in_output: int = 0  # of those, rows without probabilities (--gate refuse)
    settings: dict[str, Any] = field(default_factory=dict)
    decision: str = ""  # the positive class and the decision rule, in words


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
    backend = build_backend(config, job.meta, job.model, device, threads)
    settings = dict(device=device, workers=workers, threads=threads)
    log.info("local engine: %s", ", ".join(f"{k}={v}" for k, v in settings.items()))
    job.output.open()
    try:
        counts = score_items(
            job.todo, backend=backend, preprocessor=job.preprocessor, append=job.output.append,
            rule=job.rule, model_sha256=job.model_sha256, batch_size=config.batch_size, workers=workers,
            progress=job.progress, min_size=job.min_size(), gate=job.gate,
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
    look_up(ENGINES, config.engine, "engine")
    look_up(GATE_MODES, config.gate, "gate mode")
    if config.engine != "ray" and (config.ray_address or config.actors):
        raise ConfigError("--ray-address and --actors are for --engine ray")
    meta, model = load_meta(config)
    rule = DecisionRule.from_meta(meta, calibrated=config.calibrated)
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
    done = output.done_rows(str(meta.get("sha256", "")), rule.scale) if config.resume else {}
    todo = [i for i in items if i.key not in done]
    precision = "int8" if "quantization" in meta else config.precision
    log.info(
        "%d inputs, %d already done; engine=%s backend=%s precision=%s batch_size=%d format=%s fast_decode=%s",
        len(items), len(items) - len(todo), config.engine, config.backend, precision,
        config.batch_size, fmt, config.fast_decode,
    )  # fmt: skip
    update = progress(len(items), len(items) - len(todo)) if progress is not None else None
    job = ScoreJob(config, meta, model, rule, todo, output, update)
    counts, used = ENGINES[config.engine](job) if todo else (Counts(), {})
    counts.skipped = len(items) - len(todo)
    settings = dict(
        engine=config.engine, backend=config.backend, precision=precision,
        batch_size=config.batch_size, format=fmt, fast_decode=config.fast_decode, **used,
    )  # fmt: skip
    report = ScoreReport(counts, out, len(items), settings=settings)
    report.decision = rule.describe(meta.get("positive_class"))
    rows = output.finalize([i.key for i in items])
    report.failed_in_output = sum(1 for r in rows if r.get("error"))
    report.flagged_in_output = sum(1 for r in rows if str(r.get("in_scope")).lower() == "false")
    report.refused_in_output = sum(1 for r in rows if r.get("decision") == REFUSED)
    report.summary, report.n_studies = write_summary(out, rows, rule, config.aggregate)
    return report
