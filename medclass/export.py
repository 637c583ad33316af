"""Export a checkpoint for deployment: ONNX of the main logits, plus a JSON sidecar with what scoring needs.

``model.onnx`` takes ``image`` (N×3×S×S float32, preprocessed as the sidecar's ``input`` says; N is a
dynamic axis) and returns ``logits`` (N×C, the main head only: the aux head is not in the graph). The
sidecar ``model.onnx.json`` holds ``classes``, ``task``, ``input``, ``window``, ``fit``,
``operating_point`` and the checkpoint's weights ``sha256`` (so ``medclass score --backend onnxruntime``
can refuse an export of other weights), plus the ONNX file's own sha256 and the parity measured against
torch right after export. Both files are written atomically (the sidecar last).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medclass.errors import ConfigError

log = logging.getLogger(__name__)

SIDECAR_FORMAT = "medclass-onnx"
SIDECAR_VERSION = 1
DEFAULT_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
CARRIED_KEYS = (
    "classes",
    "task",
    "input",
    "window",
    "fit",
    "operating_point",
    "sha256",
    "num_classes",
    "image_size",
)
EXPORT_FORMATS = ("onnx",)


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and how close it is to torch (max |Δlogit| on a random batch)."""

    path: Path
    sidecar: Path
    max_abs_logit_diff: float | None
    meta: dict[str, Any]


def sidecar_path(onnx_path: str | os.PathLike[str]) -> Path:
    """``model.onnx`` → ``model.onnx.json``."""
    p = Path(onnx_path)
    return p.with_name(p.name + ".json")


def read_sidecar(onnx_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The sidecar of an exported model. Raises :class:`ConfigError` when it is missing or not ours."""
    path = sidecar_path(onnx_path)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"no sidecar {path.name} next to the ONNX model; export it with medclass export", onnx_path
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"unreadable sidecar ({exc})", path) from exc
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise ConfigError(f"not a {SIDECAR_FORMAT} sidecar", path)
    return meta


def _onnx_bytes(wrapper: Any, example: Any, opset: int) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.onnx.export(
        wrapper,
        (example,),
        buf,  # type: ignore[arg-type]  # a file object works (torch's annotation says path only)
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=opset,
        do_constant_folding=True,
        dynamo=False,  # the TorchScript exporter: no onnxscript needed, dynamic batch via dynamic_axes
    )
    return buf.getvalue()


def _parity(data: bytes, wrapper: Any, size: int) -> float | None:
    """Max |Δlogit| between onnxruntime and torch on a random 3-image batch (None without onnxruntime)."""
    try:
        import onnxruntime as ort
    except ImportError:
        log.warning("onnxruntime not installed: the export was not checked against torch")
        return None
    import numpy as np
    import torch

    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))  # 3×3×S×S
    with torch.inference_mode():
        ref = wrapper(x).numpy()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: x.numpy()})[0]
    return float(np.max(np.abs(got - ref)))


def export_onnx(
    checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], *, opset: int = DEFAULT_OPSET
) -> ExportResult:
    """Export ``checkpoint``'s main logits to ONNX at ``out`` with a sidecar ``out.json``.

    Returns an :class:`ExportResult`. Raises :class:`~medclass.errors.CheckpointError` for a bad checkpoint
    and :class:`ConfigError` when ``onnx`` is missing or the export is not faithful (|Δlogit| > 1e-3).
    """
    try:
        import onnx
    except ImportError:
        raise ConfigError("ONNX export needs onnx: pip install 'medclass[onnx]'") from None
    from medclass import __version__
    from medclass import checkpoint as checkpoints
    from medclass.fileio import atomic_write_bytes, atomic_write_text
    from medclass.model import MainLogits

    ckpt = checkpoints.load(Path(checkpoint))
    meta = ckpt.meta
    size = int((meta.get("input") or {}).get("size") or meta.get("image_size") or 299)
    wrapper = MainLogits(ckpt.model).eval()
    import torch

    data = _onnx_bytes(wrapper, torch.zeros(2, 3, size, size), opset)  # example: 2×3×S×S
    onnx.checker.check_model(onnx.load_from_string(data))
    diff = _parity(data, wrapper, size)
    if diff is not None and diff > 1e-3:
        raise ConfigError(f"exported graph differs from torch by {diff:.2e} in the logits; not written", out)
    out = Path(out)
    carried = {k: meta[k] for k in CARRIED_KEYS if k in meta}
    sidecar = {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_VERSION,
        **carried,
        "weights_sha256": meta.get("sha256"),
        "onnx_sha256": hashlib.sha256(data).hexdigest(),
        "checkpoint": str(ckpt.path),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "output": "main logits (softmax for multiclass, sigmoid for multilabel)",
        "opset": opset,
        "parity_max_abs_logit_diff": diff,
        "versions": {"medclass": __version__, "torch": torch.__version__, "onnx": onnx.__version__},
    }
    atomic_write_bytes(out, data)
    side = sidecar_path(out)
    atomic_write_text(side, json.dumps(sidecar, indent=2) + "\n")
    log.info("exported %s (%.1f MB, opset %d, max |Δlogit| vs torch %s)", out, len(data) / 1e6, opset, diff)
    return ExportResult(out, side, diff, sidecar)
