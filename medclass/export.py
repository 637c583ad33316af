"""Export a checkpoint for deployment: ONNX of the main logits, plus a JSON sidecar with what scoring needs.

``model.onnx`` takes ``image`` (N×3×S×S float32, preprocessed as the sidecar's ``input`` says; N is a
dynamic axis) and returns ``logits`` (N×C, the main head only: the aux head is not in the graph). The
sidecar ``model.onnx.json`` holds ``classes``, ``task``, ``input``, ``window``, ``fit``,
``operating_point``, ``calibration`` (applied to the logits by ``score --backend onnxruntime`` as by the
torch backend) and the checkpoint's weights ``sha256`` (so ``medclass score --backend onnxruntime``
can refuse an export of other weights), plus the ONNX file's own sha256 and size and the parity measured
against torch right after export.

The two files are one unit, written like a checkpoint pair (:func:`medclass.weights.commit_pair`): the
current export, if complete, is kept as ``model.prev.onnx`` + ``model.prev.onnx.json`` until the new
``.onnx`` then its sidecar are in place (each atomically). :func:`read_sidecar` checks the ``.onnx``
against the sidecar's size and sha256, so a torn pair (an export interrupted between the two renames, or
a file replaced by hand) is refused with a clear error, never scored with the wrong sidecar.
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
from medclass.quantize import DEFAULT_IMAGES

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
    "calibration",
    "sha256",
    "num_classes",
    "image_size",
)
EXPORT_FORMATS = ("onnx",)
PARITY_RTOL = 1e-4  # max |Δlogit| / max(1, max |logit|) allowed between onnxruntime and torch


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and how close it is to torch (max |Δlogit| on a random batch; its relative
    size is in ``meta["parity_max_rel_logit_diff"]``)."""

    path: Path
    sidecar: Path
    max_abs_logit_diff: float | None
    meta: dict[str, Any]


def sidecar_path(onnx_path: str | os.PathLike[str]) -> Path:
    """``model.onnx`` → ``model.onnx.json``."""
    p = Path(onnx_path)
    return p.with_name(p.name + ".json")


def prev_path(onnx_path: str | os.PathLike[str]) -> Path:
    """``model.onnx`` → ``model.prev.onnx``: where the previous export is kept while a new one is written."""
    p = Path(onnx_path)
    return p.with_name(f"{p.stem}.prev{p.suffix}")


def read_sidecar(onnx_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The sidecar of an exported model, after checking that the ``.onnx`` beside it is the one it describes.

    Raises :class:`ConfigError` (naming the file) when the sidecar is missing, over 16 MiB, not ours, or
    when the ``.onnx`` is missing or its size or sha256 differs from the sidecar's (a torn or replaced
    export).
    """
    from medclass.weights import read_json_capped

    path = sidecar_path(onnx_path)
    if not path.is_file():
        raise ConfigError(
            f"no sidecar {path.name} next to the ONNX model; export it with medclass export", onnx_path
        )
    try:
        meta = read_json_capped(path, "sidecar", ConfigError)
    except OSError as exc:
        raise ConfigError(f"unreadable sidecar ({exc})", path) from exc
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise ConfigError(f"not a {SIDECAR_FORMAT} sidecar", path)
    _verify_onnx(Path(onnx_path), meta)
    return meta


def _verify_onnx(onnx_path: Path, meta: dict[str, Any]) -> None:
    from medclass.weights import file_sha256

    prev = prev_path(onnx_path)
    hint = (
        f"; the previous complete export is kept as {prev.name} (+ .json)"
        if prev.is_file() and sidecar_path(prev).is_file()
        else ""
    )
    if not onnx_path.is_file():
        raise ConfigError(f"ONNX model is missing next to its sidecar; export it again{hint}", onnx_path)
    expected_size, expected_sha = meta.get("onnx_size"), meta.get("onnx_sha256")
    if not isinstance(expected_sha, str):
        raise ConfigError("sidecar records no onnx_sha256; export it again", sidecar_path(onnx_path))
    actual = onnx_path.stat().st_size
    if isinstance(expected_size, int) and actual != expected_size:
        raise ConfigError(
            f"{actual} bytes, its sidecar recorded {expected_size}: an interrupted export or a replaced file; "
            f"export it again{hint}",
            onnx_path,
        )
    try:
        digest = file_sha256(onnx_path)
    except OSError as exc:
        raise ConfigError(f"unreadable ONNX model ({exc})", onnx_path) from exc
    if digest != expected_sha:
        raise ConfigError(
            "sha256 differs from its sidecar's onnx_sha256: an interrupted export or a replaced file; "
            f"export it again{hint}",
            onnx_path,
        )


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


def _parity(data: bytes, wrapper: Any, size: int) -> tuple[float, float] | None:
    """``(max |Δlogit|, max |logit|)`` between onnxruntime and torch on a random 3-image batch (torch's
    logits as the reference; None without onnxruntime)."""
    try:
        import onnxruntime as ort
    except ImportError:
        log.warning("onnxruntime not installed: the export was not checked against torch")
        return None
    import numpy as np
    import torch

    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))  # 3×3×S×S
    with torch.inference_mode():
        ref = wrapper(x).numpy()  # 3×C
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: x.numpy()})[0]  # 3×C
    return float(np.max(np.abs(got - ref))), float(np.max(np.abs(ref)))


def relative_diff(max_abs_diff: float, max_abs_ref: float) -> float:
    """``max|Δ| / max(1, max|ref|)``: absolute for small logits, relative for large ones (a random-init
    model's logits reach 1e7, where float32 rounding alone differs by more than 1e-3)."""
    return max_abs_diff / max(1.0, max_abs_ref)


@dataclass(frozen=True)
class Int8Options:
    """What ``export --quantize int8`` calibrates on: ``manifest``'s ``split`` (at most ``images`` of
    its images, read under ``data_root``); ``force`` keeps a model the accuracy guard refuses."""

    manifest: str | os.PathLike[str]
    split: str = "val"
    data_root: str | os.PathLike[str] | None = None
    images: int = DEFAULT_IMAGES
    force: bool = False
    allow_outside_root: bool = False
    quantizer: str = "auto"  # "auto" (try every one of medclass.quantize.QUANTIZERS, keep the best) or a name


def _int8(data: bytes, ckpt: Any, options: Int8Options, out: Path) -> tuple[bytes, dict[str, Any]]:
    """The int8 graph of ``data`` and the sidecar's ``quantization`` record; raises ConfigError (nothing
    written) when the accuracy guard refuses it and ``options.force`` is not set."""
    from medclass import quantize
    from medclass.calibrate import from_meta

    x, y = quantize.calibration_inputs(
        ckpt.path, options.manifest, options.split, options.data_root, limit=options.images,
        allow_outside_root=options.allow_outside_root,
    )  # fmt: skip
    calibration = from_meta(ckpt.meta)
    positive = quantize.positive_index(ckpt.meta, ckpt.meta["classes"])
    tried: dict[str, dict[str, Any]] = {}
    chosen, int8 = "", b""
    for name in quantize.QUANTIZERS if options.quantizer == "auto" else (options.quantizer,):
        log.info("quantizing to int8 with %s, calibrated on %d %s images", name, len(x), options.split)
        candidate = quantize.quantize_int8(data, x, name)
        tried[name] = quantize.guard(
            data, candidate, x, y, task=str(ckpt.meta["task"]), positive=positive, calibration=calibration
        )
        if not chosen or quantize.better(tried[name], tried[chosen]):
            chosen, int8 = name, candidate
    checked = tried[chosen]
    record: dict[str, Any] = {
        "dtype": "int8",
        "quantizer": chosen,
        "method": quantize.METHODS[chosen],
        "calibration_manifest": str(options.manifest),
        "calibration_split": options.split,
        "forced": False,
        "guard": checked,
        "candidates": {k: {"max_abs_prob_diff": g["max_abs_prob_diff"], "auc_drop": g["auc_drop"]}
                       for k, g in tried.items()},
    }  # fmt: skip
    if not checked["passed"]:
        if not options.force:
            raise ConfigError(
                f"{quantize.describe(record)}: over the limit, not written (use the fp32 export, calibrate on "
                "more images, or pass --force to keep it anyway)",
                out,
            )
        log.warning("%s: over the limit, kept because of --force", quantize.describe(record))
        record["forced"] = True
    return int8, record


def export_onnx(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    int8: Int8Options | None = None,
) -> ExportResult:
    """Export ``checkpoint``'s main logits to ONNX at ``out`` with a sidecar ``out.json``; with ``int8``,
    the graph quantized to int8 (:mod:`medclass.quantize`), its accuracy guard's figures in the sidecar's
    ``quantization``.

    Returns an :class:`ExportResult`. Raises :class:`~medclass.errors.CheckpointError` for a bad checkpoint
    and :class:`ConfigError` when ``onnx`` is missing, the export is not faithful (max |Δlogit| over
    max(1, max |logit|) above :data:`PARITY_RTOL`) or the int8 graph fails the guard (unless forced); then
    nothing is written. A crash while writing leaves the previous export (as ``<out stem>.prev.onnx`` until
    the new one is complete) or the new one.
    """
    try:
        import onnx
    except ImportError:
        raise ConfigError("ONNX export needs onnx: pip install 'medclass[onnx]'") from None
    from medclass import __version__
    from medclass import checkpoint as checkpoints
    from medclass.model import MainLogits
    from medclass.weights import commit_pair

    ckpt = checkpoints.load(Path(checkpoint))
    meta = ckpt.meta
    size = int((meta.get("input") or {}).get("size") or meta["image_size"])  # load() validated both
    wrapper = MainLogits(ckpt.model).eval()
    import torch

    data = _onnx_bytes(wrapper, torch.zeros(2, 3, size, size), opset)  # example: 2×3×S×S
    onnx.checker.check_model(onnx.load_from_string(data))
    parity = _parity(data, wrapper, size)
    diff, rel = (None, None) if parity is None else (parity[0], relative_diff(*parity))
    if rel is not None and not rel <= PARITY_RTOL:  # NaN refuses too
        raise ConfigError(
            f"exported graph differs from torch by {diff:.2e} in the logits (relative {rel:.1e} > "
            f"{PARITY_RTOL:.0e}); not written",
            out,
        )
    out = Path(out)
    quantization = None
    if int8 is not None:
        data, quantization = _int8(data, ckpt, int8, out)
    carried = {k: meta[k] for k in CARRIED_KEYS if k in meta}
    sidecar = {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_VERSION,
        **carried,
        "weights_sha256": meta.get("sha256"),
        "onnx_sha256": hashlib.sha256(data).hexdigest(),
        "onnx_size": len(data),
        "checkpoint": str(ckpt.path),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "output": "main logits (softmax for multiclass, sigmoid for multilabel; then 'calibration' if present)",
        "opset": opset,
        "parity_max_abs_logit_diff": diff,
        "parity_max_rel_logit_diff": rel,
        "precision": "fp32" if quantization is None else "int8",
        **({} if quantization is None else {"quantization": quantization}),
        "versions": {"medclass": __version__, "torch": torch.__version__, "onnx": onnx.__version__},
    }
    side = sidecar_path(out)
    prev = prev_path(out)
    commit_pair(
        out,
        data,
        side,
        json.dumps(sidecar, indent=2) + "\n",
        (prev, sidecar_path(prev)),
        digest_key="onnx_sha256",
    )
    log.info(
        "exported %s (%s, %.1f MB, opset %d, fp32 graph's max |Δlogit| vs torch %s)",
        out, sidecar["precision"], len(data) / 1e6, opset, diff,
    )  # fmt: skip
    return ExportResult(out, side, diff, sidecar)
