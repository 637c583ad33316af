"""``medclass export``: a checkpoint → ONNX (main logits, dynamic batch) + a JSON sidecar for scoring."""

from __future__ import annotations

import argparse
from pathlib import Path

from medclass.cli import ExitCode

HELP = "export a checkpoint to ONNX (for medclass score --backend onnxruntime)"
DESCRIPTION = """\
Export the checkpoint's main head (the aux head is left out) to ONNX with a dynamic batch axis:
input 'image' N×3×S×S (preprocessed as the sidecar's 'input' says), output 'logits' N×C. A sidecar
<out>.json records classes, task, input spec, window, fit, operating point, the weights' sha256 and the
.onnx file's own sha256 (scoring refuses a .onnx that does not match it). The export is checked against
torch on a random batch (max |dlogit| / max(1, max |logit|) <= 1e-4) before it is written; while the
two files are replaced, the previous export is kept as <out stem>.prev.onnx (+ .json).

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
    rel = result.meta.get("parity_max_rel_logit_diff")
    diff = (
        "not checked"
        if result.max_abs_logit_diff is None
        else f"{result.max_abs_logit_diff:.1e} (relative {rel:.1e})"
    )
    print(f"exported {result.path} (+ {result.sidecar.name}); max |Δlogit| vs torch: {diff}")
    return ExitCode.OK
