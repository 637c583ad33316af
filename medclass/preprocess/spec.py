"""What the model expects as input, read from timm's pretrained config (the only place 299 lives)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

from medclass.errors import ConfigError
from medclass.names import ARCHITECTURE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputSpec:
    """The model's input: ``size``×``size`` pixels, 3 channels normalised with ``mean``/``std``.

    ``interpolation`` is timm's name (``bicubic``, ``bilinear``...) for the resize; ``model_name`` the timm
    model the values were read from.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    model_name: str = ARCHITECTURE


@lru_cache(maxsize=16)
def _pretrained(model_name: str) -> tuple[int, tuple[float, ...], tuple[float, ...], str]:
    import timm
    from timm.data import resolve_data_config

    cfg = timm.get_pretrained_cfg(model_name)
    if cfg is None:
        raise ConfigError(
            f"timm has no pretrained config for model {model_name!r}; "
            "use a name from timm.list_pretrained() such as 'inception_v3'"
        )
    data = resolve_data_config(pretrained_cfg=cfg.to_dict())
    _, height, width = data["input_size"]
    if height != width:
        raise ConfigError(f"model {model_name!r} expects a non-square input {height}×{width}; not supported")
    return int(height), tuple(data["mean"]), tuple(data["std"]), str(data["interpolation"])


def input_spec(model_name: str = ARCHITECTURE, image_size: int | None = None) -> InputSpec:
    """The :class:`InputSpec` of timm's ``model_name``, without building the model.

    ``image_size`` overrides the pretrained size (quick runs at 128 or 160 px); mean, std and
    interpolation still come from timm. Raises :class:`ConfigError` for an unknown model or a size < 16.
    """
    size, mean, std, interpolation = _pretrained(model_name)
    if image_size is not None:
        if int(image_size) < 16:
            raise ConfigError(
                f"image size {image_size} is too small; use at least 16 (the model wants {size})"
            )
        size = int(image_size)
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    return InputSpec(
        size=size,
        mean=(float(mean[0]), float(mean[1]), float(mean[2])),
        std=(float(std[0]), float(std[1]), float(std[2])),
        interpolation=interpolation,
        model_name=model_name,
    )
