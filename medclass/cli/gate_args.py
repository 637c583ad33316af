"""``--gate``: the one definition of the input-gate flag that score, explain and evaluate share."""

from __future__ import annotations

import argparse

from medclass.names import GATE_MODES

GATE_HELP = (
    "the input gate (checks every image against the checkpoint's training-data profile: header values, "
    "layout, feature distance): flag = probabilities plus in_scope/gate_reason; refuse = no probabilities "
    "for out-of-scope images (decision 'refused', not an error: the exit code is unchanged); off = no gate"
)


def add_gate_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add ``--gate flag|refuse|off`` (default ``flag``) to ``parser``."""
    parser.add_argument("--gate", choices=GATE_MODES, default="flag", help=GATE_HELP)


def gate_line(flagged: int, total: int, refused: int = 0) -> str:
    """The closing line about the gate: how many images it put out of scope (and refused)."""
    tail = f", {refused} refused (no probabilities)" if refused else ""
    return f"input gate: {flagged} of {total} image(s) out of scope{tail}"
