"""Batch scoring: many images in, one committed row per 2D frame out, exactly once, resumable.

Public API::

    run_scoring(ScoreConfig(paths, out, checkpoint=...)) -> ScoreReport   # the whole run (CLI: score)
    expand_inputs(paths, slice_policy="all", data_root=None) -> list[WorkItem]
    score_items(items, backend=..., preprocessor=..., append=..., rule=..., model_sha256=...) -> Counts
    score_batch(decoded, backend, rule, model_sha256) -> rows   # one batch; every engine uses it
    make_backend("torch" | "onnxruntime", ...) -> backend(x N×3×S×S) -> probs N×C   # the one Predictor
    ScoreOutput(out, fmt, columns)    # the row logs: check / done_rows / open / append / sink / finalize
    ENGINES["local" | "ray"](ScoreJob) -> (Counts, settings)     # --engine
    read_scores(path) -> rows; DecisionRule.from_meta(meta).predict(probs) -> labels
    write_summary(out, rows, rule, "mean" | "max") -> (scores.studies.csv, n_studies)

Modules: :mod:`~medclass.score.inputs` (PATHs → work items), :mod:`~medclass.score.pipeline` (decode in
worker processes overlapped with batched inference), :mod:`~medclass.score.backends` (device, and the
:class:`~medclass.model.predictor.Predictor` shared with evaluate and explain), :mod:`~medclass.score.rows` (columns, formats), :mod:`~medclass.score.writer` (append
logs, block parts, resume, merge), :mod:`~medclass.score.job` (settings, model, what an engine gets),
:mod:`~medclass.score.decide` (operating point), :mod:`~medclass.score.summary` (per study),
:mod:`~medclass.score.runner` (one run, the engine table), :mod:`~medclass.score.ray_engine` (the same
functions as Ray Data stages). Importing this package imports neither torch nor Ray.
"""

from __future__ import annotations

from medclass.score.backends import make_backend, pick_device
from medclass.score.decide import DecisionRule
from medclass.score.inputs import WorkItem, expand_inputs, item_key
from medclass.score.pipeline import (
    Counts,
    Decoded,
    decode_item,
    decode_stream,
    default_workers,
    score_batch,
    score_items,
)
from medclass.score.runner import ENGINES, ScoreConfig, ScoreJob, ScoreReport, run_scoring
from medclass.score.summary import study_rows, summary_path, write_summary
from medclass.score.writer import FORMATS, PartSink, ScoreOutput, block_id, read_scores, score_columns

__all__ = [
    "ENGINES",
    "FORMATS",
    "Counts",
    "DecisionRule",
    "Decoded",
    "PartSink",
    "ScoreConfig",
    "ScoreJob",
    "ScoreOutput",
    "ScoreReport",
    "WorkItem",
    "block_id",
    "decode_item",
    "decode_stream",
    "default_workers",
    "expand_inputs",
    "item_key",
    "make_backend",
    "pick_device",
    "read_scores",
    "run_scoring",
    "score_batch",
    "score_columns",
    "score_items",
    "study_rows",
    "summary_path",
    "write_summary",
]
