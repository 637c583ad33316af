"""Pretrained Inception V3 weights by name, through timm's and huggingface_hub's own cache.

``--weights`` accepts, besides a local file:

- ``timm:inception_v3.tv_in1k`` — a timm pretrained tag (``timm:inception_v3`` takes timm's default tag);
  timm's pretrained config names the Hugging Face repository (``timm/inception_v3.tv_in1k``);
- ``hf-hub:timm/inception_v3.tv_in1k`` — a Hugging Face repository, as timm spells it.

The file (``model.safetensors``, else ``pytorch_model.bin``) is taken from the huggingface_hub cache
(``$HF_HUB_CACHE``, default ``$HF_HOME/hub`` = ``~/.cache/huggingface/hub``) without touching the network
when it is there. When it is not, it is downloaded into that cache once — unless the machine is offline
(``HF_HUB_OFFLINE=1``), which gives a one-line error saying how to fill the cache.
"""

from __future__ import annotations

import logging
from pathlib import Path

from medclass.errors import CheckpointError
from medclass.names import ARCHITECTURE

log = logging.getLogger(__name__)

PREFIXES = ("timm:", "hf-hub:")
FILENAMES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub loader looks for, in order


def is_name(weights: object) -> bool:
    """Whether ``weights`` is a name (``timm:…``, ``hf-hub:…``) rather than a local file."""
    return isinstance(weights, str) and weights.startswith(PREFIXES)


def repo_id(name: str) -> str:
    """The Hugging Face repository of a ``timm:``/``hf-hub:`` name.

    Raises :class:`CheckpointError` for another architecture or a timm tag without hub weights, listing the
    Inception V3 tags timm knows.
    """
    if name.startswith("hf-hub:"):
        repo = name.removeprefix("hf-hub:").split("@")[0].strip("/")
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise CheckpointError(
                f"{name!r} is not hf-hub:OWNER/REPO (e.g. hf-hub:timm/inception_v3.tv_in1k)"
            )
        return repo
    import timm

    model_name = name.removeprefix("timm:")
    known = timm.list_pretrained(f"{ARCHITECTURE}*")
    arch = model_name.split(".")[0]
    if arch != ARCHITECTURE:
        raise CheckpointError(
            f"{name!r}: medclass trains {ARCHITECTURE} only; use one of "
            + ", ".join(f"timm:{k}" for k in known)
        )
    cfg = timm.models.get_pretrained_cfg(model_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise CheckpointError(
            f"{name!r}: timm has no Hugging Face weights by that name; use one of "
            + ", ".join(f"timm:{k}" for k in known)
        )
    return str(hub_id)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def resolve(name: str) -> Path:
    """The local file holding the weights called ``name`` (see the module docstring).

    Returns the path in the huggingface_hub cache. Raises :class:`CheckpointError` when the name is not an
    Inception V3 one, or the weights are not cached and the machine is offline or the download fails.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    repo = repo_id(name)
    for filename in FILENAMES:
        found = try_to_load_from_cache(repo, filename, cache_dir=_cache_dir())
        if isinstance(found, str):
            log.info("weights %s: %s from the Hugging Face cache", name, found)
            return Path(found)
    cache = _cache_dir()
    if _offline():
        raise CheckpointError(
            f"weights {name} are not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE=1; on a machine "
            f"with network run `hf download {repo}` (same HF_HOME) once, or give a local file to --weights"
        )
    log.info("weights %s: downloading %s into the Hugging Face cache %s", name, repo, cache)
    problems = []
    for filename in FILENAMES:
        try:
            return Path(hf_hub_download(repo, filename, cache_dir=cache))
        except Exception as exc:  # network, missing file, gated repo: all become one line below
            problems.append(f"{filename}: {type(exc).__name__}")
    raise CheckpointError(
        f"weights {name} are not in the Hugging Face cache ({cache}) and could not be downloaded "
        f"({'; '.join(problems)}); check the name and the network, or give a local file to --weights"
    )
