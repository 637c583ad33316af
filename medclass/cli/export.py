"""``medclass export``: a checkpoint → ONNX (main logits, dynamic batch) + a JSON sidecar for scoring."""

from __future__ import annotations

import argparse
from pathlib import Path

from medclass.cli import ExitCode

HELP = "export a checkpoint to ONNX (for medclass score --backend onnxruntime)"
DESCRIPTION = """\
Export the checkpoint's main head (the aux head is left out) to ONNX with a dynamic batch axis:
input 'image' N×3×S×S (preprocessed as the sidecar's 'input' says), output 'logits' N×C. A sidecar
<out>.json records classes, task, input spec, window, fit, operating point and the weights' sha256; the
export is checked against torch on a random batch before it is written (atomically).

Examples:
  medclass export --checkpoint runs/r1/best --format onnx --out model.onnx
  medclass score --backend onnxruntime --onnx model.onnx scans/ --out scores.csv
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="checkpoint stem (or .json/.safetensors)"
    )
    parser.add_argument("--format", choices=("onnx",), default="onnx")
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version")


def run(args: argparse.Namespace) -> ExitCode:
    from medclass.export import export_onnx

    result = export_onnx(args.checkpoint, args.out, opset=args.opset)
    diff = "not checked" if result.max_abs_logit_diff is None else f"{result.max_abs_logit_diff:.1e}"
    print(f"exported {result.path} (+ {result.sidecar.name}); max |Δlogit| vs torch: {diff}")
    return ExitCode.OK
