"""Tests for medclass.names: each shared name is said once, and the tables that act on them agree."""

from __future__ import annotations

import subprocess
import sys

from medclass import names


def test_the_tables_are_keyed_by_the_shared_names() -> None:
    from medclass.model import PRECISIONS, TASK_ACTIVATIONS, TRANSFER_MODES
    from medclass.model.predictor import PREDICTORS
    from medclass.train import config

    assert tuple(TRANSFER_MODES) == names.TRANSFER_MODE_NAMES
    assert tuple(TASK_ACTIVATIONS) == names.TASKS
    assert set(names.PRECISION_NAMES) <= set(PRECISIONS)  # fp16 also exists, for CUDA autocast only
    assert tuple(PREDICTORS) == names.BACKEND_NAMES
    from medclass.score.runner import ENGINES

    assert tuple(ENGINES) == names.ENGINE_NAMES
    from medclass.metrics.aggregate import AGGREGATORS
    from medclass.score.rows import FORMATS

    assert tuple(AGGREGATORS) == names.AGGREGATIONS and FORMATS == names.SCORE_FORMATS
    assert config.MODES == names.TRANSFER_MODE_NAMES and config.PRECISIONS == names.PRECISION_NAMES
    assert config.TrainConfig().model_name == names.ARCHITECTURE


def test_the_command_line_offers_exactly_the_shared_names() -> None:
    from medclass.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    choices = {
        (command, action.dest): tuple(action.choices)
        for command, p in sub.choices.items()
        for action in p._actions
        if action.choices is not None
        and action.dest
        in ("mode", "precision", "device", "backend", "engine", "cache", "cache_dtype", "aggregate", "format")
    }
    assert choices[("train", "mode")] == names.TRANSFER_MODE_NAMES
    assert choices[("train", "precision")] == choices[("score", "precision")] == names.PRECISION_NAMES
    assert choices[("train", "device")] == choices[("score", "device")] == names.DEVICE_NAMES
    assert choices[("score", "backend")] == names.BACKEND_NAMES
    assert choices[("score", "engine")] == names.ENGINE_NAMES
    assert choices[("demo", "device")] == names.DEVICE_NAMES
    assert choices[("score", "aggregate")] == choices[("evaluate", "aggregate")] == names.AGGREGATIONS
    assert choices[("score", "format")] == names.SCORE_FORMATS
    assert choices[("train", "cache")] == names.CACHE_MODES
    assert choices[("train", "cache_dtype")] == names.CACHE_DTYPES


def test_the_column_prefixes_come_from_one_place() -> None:
    from medclass.evaluate import table
    from medclass.manifest import FINDING_PREFIX
    from medclass.score.writer import score_columns

    assert FINDING_PREFIX == table.FINDING == names.FINDING_PREFIX
    assert table.PROB == names.PROB_PREFIX
    assert f"{names.PROB_PREFIX}a" in score_columns(["a", "b"])


def test_names_is_light() -> None:
    code = "import sys, medclass.names; print(any(m in sys.modules for m in ('torch', 'timm', 'numpy')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
