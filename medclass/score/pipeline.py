"""The scoring loop: decode + preprocess in worker processes, overlapped with batched inference here.

Workers (a process pool, see :data:`START_METHOD`) read and preprocess items; this process keeps at most ``prefetch`` items in flight, takes results back in input
order, runs the model on every ``batch_size`` decoded images, and commits the rows of the batch (scored
and failed ones, in input order) to the writer. While the model runs, the workers decode the next
batches. ``workers=0`` decodes in this process (no overlap; for tiny runs and debugging).

This module imports no torch at module level: the workers import it only if the preprocessor does.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medclass.errors import InvalidPixelDataError
from medclass.gate import NOT_GATED, Gate, GateResult, ImageFacts
from medclass.names import REFUSED
from medclass.phi import pseudonym
from medclass.score.decide import DecisionRule
from medclass.score.inputs import WorkItem, one_line
from medclass.score.rows import PROB_PREFIX, SCALE_COLUMN

log = logging.getLogger(__name__)


@dataclass
class Decoded:
    """A work item after decoding: ``array`` 3×S×S float32, or None and ``error``; ``facts``: the header
    values the input gate compares (None when the file could not be read)."""

    item: WorkItem
    array: np.ndarray | None
    patient: str = ""
    study_uid: str = ""
    series_uid: str = ""
    error: str = ""
    facts: ImageFacts | None = None


def decode_item(item: WorkItem, preprocessor: Callable[[Any], Any], min_size: int | None = None) -> Decoded:
    """Read frame ``item.frame`` of ``item.path`` and preprocess it. Never raises: failures come back
    as a :class:`Decoded` with ``error`` (one line: the typed error's message, naming the file).
    ``min_size``: allow a reduced-resolution decode down to this side (see :func:`medclass.ingest.read_frame`).
    """
    if item.error:
        return Decoded(item, None, pseudonym(item.patient_id), item.study_id, "", item.error)
    patient, study, series = item.patient_id, item.study_id, ""
    facts = None
    try:
        from medclass import ingest

        image = ingest.read_frame(item.file or item.path, int(item.frame or 0), min_size=min_size)
        meta = image.meta
        patient = meta.patient_id or patient
        study, series = meta.study_uid or study, meta.series_uid
        facts = ImageFacts.from_meta(meta)
        prepared = preprocessor(image)
        array = np.ascontiguousarray(getattr(prepared, "array", prepared), dtype=np.float32)  # 3×S×S
        if array.ndim != 3 or array.shape[0] != 3:
            raise InvalidPixelDataError(f"preprocessing gave shape {array.shape}, expected 3×S×S", item.path)
        if not np.isfinite(array).all():
            raise InvalidPixelDataError("preprocessed image holds NaN or Inf values", item.path)
    except Exception as exc:  # a bad input is a row with its error, never a crash of the run
        return Decoded(item, None, pseudonym(patient), study, series, one_line(exc), facts)
    return Decoded(item, array, pseudonym(patient), study, series, facts=facts)


# --- worker processes ------------------------------------------------------------------------------
#: ``fork`` where there is one (Linux): a worker starts in milliseconds with torch and the readers already
#: imported (``spawn`` re-imports them: seconds per worker, which dominated short runs). Workers never touch
#: the model, CUDA or the process group they inherit, and run torch with one thread, as DataLoader workers do.
START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
_WORKER: dict[str, Any] = {}


def _exit_with_parent(parent: int) -> None:
    """Exit when the main process is gone (a SIGKILL leaves no one to shut the pool down)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _init_worker(preprocessor: Callable[[Any], Any], min_size: int | None) -> None:
    _WORKER["preprocessor"] = preprocessor
    _WORKER["min_size"] = min_size
    import sys

    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()

    if "torch" in sys.modules:  # a worker should use one core, not compete with the model's threads
        sys.modules["torch"].set_num_threads(1)


def _decode_in_worker(item: WorkItem) -> Decoded:
    return decode_item(item, _WORKER["preprocessor"], _WORKER["min_size"])


def decode_stream(
    items: Iterable[WorkItem],
    preprocessor: Callable[[Any], Any],
    *,
    workers: int = 0,
    prefetch: int = 64,
    min_size: int | None = None,
) -> Iterator[Decoded]:
    """The decoded items, in input order, from ``workers`` processes (0: here) with ``prefetch`` in flight
    (``min_size``: see :func:`decode_item`).

    If a worker process dies (a codec crash), the pool is restarted and the items in flight are decoded
    again; an item whose decoding killed a worker twice becomes an error row.
    """
    if workers <= 0:
        for item in items:
            yield decode_item(item, preprocessor, min_size)
        return
    source = iter(items)
    pending: deque[tuple[WorkItem, Future[Decoded]]] = deque()
    crashes: dict[str, int] = {}
    ctx = multiprocessing.get_context(START_METHOD)

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init_worker, initargs=(preprocessor, min_size)
        )

    pool = new_pool()
    try:
        for item in source:
            pending.append((item, pool.submit(_decode_in_worker, item)))
            if len(pending) >= prefetch:
                break
        while pending:
            item, fut = pending.popleft()
            try:
                result = fut.result()
            except BrokenProcessPool:  # a worker died: restart the pool, decode what was in flight again
                crashes[item.key] = crashes.get(item.key, 0) + 1
                pool.shutdown(wait=False, cancel_futures=True)
                pool = new_pool()
                retry = [i for i, _ in pending]
                pending.clear()
                if crashes[item.key] < 2:
                    retry.insert(0, item)
                for i in retry:
                    pending.append((i, pool.submit(_decode_in_worker, i)))
                if crashes[item.key] < 2:
                    continue
                log.warning("%s: decoding killed the worker process twice; reported as failed", item.path)
                result = Decoded(item, None, error=f"{item.path}: decoding crashed the worker process twice")
            nxt = next(source, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_decode_in_worker, nxt)))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --- the loop --------------------------------------------------------------------------------------
@dataclass
class Counts:
    """What a run did: ``scored`` and ``failed`` rows written now, ``skipped`` already done before; of the
    scored ones, ``flagged`` out of scope by the input gate, ``refused`` of those without probabilities."""

    scored: int = 0
    failed: int = 0
    skipped: int = 0
    flagged: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)  # the first few error texts, for the closing line


def _row(
    d: Decoded,
    probs: np.ndarray | None,
    label: str,
    rule: DecisionRule,
    model_sha256: str,
    verdict: GateResult = NOT_GATED,
    refused: bool = False,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "path": d.item.path,
        "frame": None if d.item.frame is None else int(d.item.frame),
        "patient": d.patient,
        "study_uid": d.study_uid,
        "series_uid": d.series_uid,
    }
    for k, c in enumerate(rule.classes):
        row[PROB_PREFIX + c] = None if probs is None else round(float(probs[k]), 7)
    row |= {
        "predicted": label,
        "decision": REFUSED if refused else rule.name if probs is not None else "",
        **verdict.columns(),
        SCALE_COLUMN: rule.scale if probs is not None else "",
        "model_sha256": model_sha256,
        "error": d.error,
    }
    return row


def _predict(
    backend: Callable[[np.ndarray], np.ndarray], x: np.ndarray, gate: Gate | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities and, when the gate wants them and the backend has them, pooled features (one pass)."""
    predict = getattr(backend, "predict", None)
    if gate is not None and gate.wants_features and predict is not None:
        return predict(x)
    return backend(x), None


def score_batch(
    decoded: Sequence[Decoded],
    backend: Callable[[np.ndarray], np.ndarray],
    rule: DecisionRule,
    model_sha256: str,
    counts: Counts | None = None,
    gate: Gate | None = None,
) -> list[dict[str, Any]]:
    """The rows of one batch of decoded items, in their order: the decoded ones through ``backend`` in one
    call, the failed ones as error rows. With a ``gate``, every decoded row also gets ``in_scope``,
    ``gate_reason`` and ``ood_score`` (features from the same forward pass), and under ``--gate refuse`` an
    out-of-scope row keeps no probabilities and no label (decision ``refused``; not an error). Adds to
    ``counts`` when given. Every engine (the local loop, the Ray actors) turns decoded items into rows with
    this function.
    """
    ok = [d for d in decoded if d.array is not None]
    x = np.stack([d.array for d in ok if d.array is not None]) if ok else None  # N×3×S×S
    probs, feats = _predict(backend, x, gate) if x is not None else (np.zeros((0, len(rule.classes))), None)
    labels = rule.predict(probs) if ok else []
    verdicts = (
        gate.judge([d.facts for d in ok], x, feats)
        if gate is not None and x is not None
        else [NOT_GATED] * len(ok)
    )
    by_id = {id(d): (p, lab, v) for d, p, lab, v in zip(ok, probs, labels, verdicts, strict=True)}
    rows = []
    for d in decoded:
        p, lab, verdict = by_id.get(id(d), (None, "", NOT_GATED))
        refused = gate is not None and gate.refuses(verdict)
        if refused:
            p, lab = None, ""
        rows.append(_row(d, p, lab, rule, model_sha256, verdict, refused))
        if counts is None:
            continue
        if d.array is None:
            counts.failed += 1
            if len(counts.errors) < 5:
                counts.errors.append(d.error)
        else:
            counts.scored += 1
            counts.flagged += verdict.in_scope is False
            counts.refused += refused
    return rows


def score_items(
    items: Sequence[WorkItem],
    *,
    backend: Callable[[np.ndarray], np.ndarray],
    preprocessor: Callable[[Any], Any],
    append: Callable[[list[dict[str, Any]]], None],
    rule: DecisionRule,
    model_sha256: str,
    batch_size: int = 32,
    workers: int = 0,
    prefetch: int | None = None,
    progress: Callable[[int], None] | None = None,
    min_size: int | None = None,
    gate: Gate | None = None,
) -> Counts:
    """Score ``items`` (none already done: filter them first) and hand each batch's rows to ``append``.
    ``min_size`` allows reduced-resolution decoding (see :func:`decode_item`); ``gate`` judges every
    image (see :func:`score_batch`).

    ``append`` must commit the rows before returning (see :class:`~medclass.score.writer.ScoreOutput`);
    ``progress(n)`` is called with the number of items each commit covers. Returns the :class:`Counts`.
    """
    counts = Counts()
    prefetch = prefetch or max(2 * batch_size, 4 * max(workers, 1))
    pending: list[Decoded] = []
    n_ok = 0

    def flush() -> None:
        nonlocal n_ok
        rows = score_batch(pending, backend, rule, model_sha256, counts, gate)
        append(rows)
        if progress is not None:
            progress(len(rows))
        pending.clear()
        n_ok = 0

    for d in decode_stream(items, preprocessor, workers=workers, prefetch=prefetch, min_size=min_size):
        pending.append(d)
        if d.array is not None:
            n_ok += 1
        if n_ok >= batch_size:
            flush()
    if pending:
        flush()
    return counts


def default_workers() -> int:
    """Decode workers when not given: one per core, at most 8.

    Measured on 2 cores (``benchmarks/bench_score.py``, fp32, 299 px): 2 workers 0.80-0.84× the
    forward-only rate against 0.76-0.77× with 1: while the model waits for a batch, every core decodes.
    """
    return max(1, min(8, os.cpu_count() or 1))
