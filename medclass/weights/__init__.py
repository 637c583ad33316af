"""Weights on disk, read without ever unpickling: the one home of checkpoint *reading*.

Below both :mod:`medclass.model` (which loads local weights into a new model) and
:mod:`medclass.checkpoint` (which saves models and loads them back), so neither imports the other's
package to read a file:

- :func:`read_meta` — a checkpoint's validated sidecar (``<stem>.json``); the only place it is read.
- :func:`read_checkpoint` — a checkpoint's verified ``(state_dict, meta)``.
- :func:`read_state_dict` — any local weights: a medclass checkpoint, a ``.safetensors`` file, or a torch
  file loaded with ``weights_only=True``.

The sidecar format lives in :mod:`medclass.weights.sidecar`, the crash-safe pair of files in
:mod:`medclass.weights.pair`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from medclass.errors import CheckpointError, short_message
from medclass.weights.pair import (
    PICKLE_SUFFIXES,
    checkpoints_in,
    commit_pair,
    commit_stem_pair,
    file_sha256,
    pair_paths,
    read_pair,
    resolve,
    stem_of,
    with_suffix,
)
from medclass.weights.sidecar import (
    FORMAT_VERSION,
    IMAGE_SIZE_RANGE,
    MAX_SIDECAR_BYTES,
    SUPPORTED_FORMAT_VERSIONS,
    TASKS,
    meta_digest,
    read_json_capped,
    read_sidecar,
)

__all__ = [
    "FORMAT_VERSION",
    "IMAGE_SIZE_RANGE",
    "MAX_SIDECAR_BYTES",
    "PICKLE_SUFFIXES",
    "SUPPORTED_FORMAT_VERSIONS",
    "TASKS",
    "checkpoints_in",
    "commit_pair",
    "commit_stem_pair",
    "file_sha256",
    "meta_digest",
    "pair_paths",
    "read_checkpoint",
    "read_json_capped",
    "read_meta",
    "read_pair",
    "read_sidecar",
    "read_state_dict",
    "resolve",
    "stem_of",
    "with_suffix",
]


def read_meta(path: Path | str) -> dict[str, Any]:
    """The validated sidecar of the checkpoint at ``path`` (its stem, ``.json`` or ``.safetensors`` path).

    Does not read the weights. Raises :class:`CheckpointError` naming the file for a pickle file and for
    everything :func:`~medclass.weights.sidecar.read_sidecar` refuses, and "no checkpoint at X" (listing
    what is there) when nothing is; a run folder means ``RUN/best`` (:func:`~medclass.weights.pair.resolve`).
    """
    return read_sidecar(with_suffix(resolve(path), ".json"))


def read_checkpoint(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The verified state dict and sidecar of a checkpoint (stem, ``.json`` or ``.safetensors`` path).

    Returns ``(state_dict, meta)``. Raises :class:`CheckpointError` naming the file for a pickle file, a
    missing or invalid sidecar, an unknown ``format_version`` or architecture, a size or sha256 mismatch,
    or an unreadable safetensors file.
    """
    stem = resolve(path)
    meta, data, st_path = read_pair(stem, "", read_sidecar)
    try:
        state = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"corrupt safetensors file ({exc})", st_path) from exc
    return state, meta


def _is_medclass_checkpoint(path: Path) -> bool:
    if path.suffix == ".json":
        return True
    stem = path.with_suffix("") if path.suffix == ".safetensors" else path
    return with_suffix(stem, ".json").is_file() and with_suffix(stem, ".safetensors").is_file()


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """Read a state dict from a local file without ever running pickled code.

    Accepts a medclass checkpoint (verified through :func:`read_checkpoint`), a ``.safetensors`` file, or a
    torch file loaded with ``weights_only=True``. Wrapper dicts (``state_dict``/``model``/``state_dict_ema``)
    and ``module.`` prefixes are removed.

    Returns the tensors by key. Raises :class:`CheckpointError` (naming the file) when the file is missing,
    unreadable, refused by the weights-only unpickler, or holds something other than tensors.
    """
    path = Path(path)
    if _is_medclass_checkpoint(path):
        return read_checkpoint(path)[0]
    if not path.is_file():
        raise CheckpointError("weights file not found", path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd: Any = load_file(str(path), device="cpu")
        except Exception as exc:
            raise CheckpointError(f"not a readable safetensors file ({short_message(exc)})", path) from exc
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(
                "refusing to unpickle: the weights-only loader rejected this file "
                f"({short_message(exc)}); give a plain state dict or .safetensors",
                path,
            ) from exc
    if isinstance(sd, dict):
        for key in ("state_dict_ema", "state_dict", "model"):
            if isinstance(sd.get(key), dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError("does not hold a state dict (a mapping of names to tensors)", path)
    from timm.models import clean_state_dict

    return clean_state_dict(sd)
