"""Tests for medclass.errors: the one "exception → one line" and the one "unknown name" lookup."""

from __future__ import annotations

import pytest

from medclass.errors import ConfigError, DataError, ManifestError, look_up, short_message


def test_short_message_is_one_line_cut_and_optionally_typed() -> None:
    exc = ValueError("first line\n  second\tline")
    assert short_message(exc) == "first line second line"
    assert short_message(exc, typed=True) == "ValueError: first line second line"
    assert short_message(ValueError("x" * 300)) == "x" * 200 + "…"
    assert short_message(ValueError("x" * 300), None) == "x" * 300
    assert short_message(ValueError(), typed=True) == "ValueError" and short_message(ValueError()) == ""
    mc = DataError("no rows", "a.csv")
    assert short_message(mc, typed=True) == "a.csv: no rows"  # medclass messages already say what failed


def test_look_up_returns_the_entry_or_lists_the_valid_names() -> None:
    table = {"a": 1, "b": 2}
    assert look_up(table, "b", "thing") == 2
    assert look_up(("x", "y"), "y", "name") == "y"
    with pytest.raises(ConfigError, match=r"^unknown thing 'c'; valid: a, b$"):
        look_up(table, "c", "thing")
    with pytest.raises(ConfigError, match=r"valid: a, b, index:N$"):
        look_up(table, "c", "thing", also=["index:N"])
    with pytest.raises(ManifestError, match=r"^m\.csv: unknown split 'dev'"):
        look_up(("train", "val", "test"), "dev", "split", error=ManifestError, path="m.csv")
    with pytest.raises(ConfigError, match="unknown thing"):
        look_up(table, ["unhashable"], "thing")  # type: ignore[arg-type]


def test_every_stage_uses_the_one_lookup() -> None:
    from medclass.ingest import get_reader, get_slice_policy
    from medclass.model import probabilities
    from medclass.preprocess import fit_policy
    from medclass.score.backends import pick_device

    for call, what in (
        (lambda: get_reader("tiff"), "reader"),
        (lambda: get_slice_policy("first"), "slice policy"),
        (lambda: fit_policy("zoom"), "fit"),
        (lambda: probabilities(__import__("torch").zeros(1, 2), "regression"), "task"),
        (lambda: pick_device("tpu"), "device"),
    ):
        with pytest.raises(ConfigError, match=rf"^unknown {what} '.*'; valid: "):
            call()
