"""Run profiles of ``medclass demo``: how much data, which input size, how long to train.

``quick`` is tuned to finish within a few minutes on 2 CPU cores and still learn the task (test AUC ≥ 0.9,
Grad-CAM on the opacity); ``full`` uses the model's native 299 px input and more data and epochs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from medclass.errors import look_up


@dataclass(frozen=True)
class Profile:
    """Settings of one demo run. ``train`` holds extra ``medclass train`` options (flag → value)."""

    name: str
    description: str
    n_patients: int
    images_per_patient: tuple[int, int]
    image_size: int | None  # None: the model's own input size (resolved by get_profile)
    epochs: int
    batch_size: int
    lr: float
    mode: str = "full"
    backbone_lr_scale: float = 1.0  # no pretrained weights offline: the backbone learns at full rate
    warmup_epochs: float = 1.0
    patience: int = 0
    cam_layer: str = "Mixed_6e"  # 7×7 at 144 px; Mixed_7c would be 3×3
    cam_method: str = "gradcam"
    n_explain_positive: int = 3
    n_explain_negative: int = 2
    bootstrap: int = 2000
    sizes: tuple[tuple[int, int], ...] = ((512, 512), (640, 560), (480, 600))
    lesion_contrast: float | None = None  # None: the generator's realistic 0.14–0.22 range
    train: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, **changes: Any) -> Profile:
        """A copy with ``changes`` applied (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


PROFILES: dict[str, Profile] = {
    "quick": Profile(
        name="quick",
        description="144 px input, 200 patients, 16 epochs: about 4–5 minutes on 2 CPU cores",
        n_patients=200,
        images_per_patient=(1, 3),
        image_size=144,
        epochs=16,
        batch_size=32,
        lr=1.5e-3,
        cam_layer="Mixed_6e",
    ),
    "full": Profile(
        name="full",
        description="the model's native 299 px input, more patients and epochs (expect well over half an hour on 2 CPU cores)",
        n_patients=400,
        images_per_patient=(1, 3),
        image_size=None,
        epochs=20,
        batch_size=32,
        lr=1e-3,
        cam_layer="Mixed_6e",
        n_explain_positive=4,
        n_explain_negative=4,
    ),
}


def get_profile(name: str) -> Profile:
    """The profile called ``name``; an unknown name raises :class:`ConfigError` listing the valid ones."""
    profile: Profile = look_up(PROFILES, name, "demo profile")
    if profile.image_size is None:
        from medclass.preprocess.spec import input_spec

        profile = replace(profile, image_size=input_spec().size)
    return profile
