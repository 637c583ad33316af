"""Shared fixtures: where the real data live, and how their absence is handled.

Real-data tests read ``../shared/data`` (next to the checkout) or ``$MEDCLASS_DATA_ROOT``. On a user's clone
without it they skip with a reason; under CI (``CI=true``) a missing folder is an error, so real-data
tests never skip silently there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    env = os.environ.get("MEDCLASS_DATA_ROOT")
    return Path(env) if env else (REPO.parent / "shared" / "data")


def _require(path: Path) -> Path:
    if path.exists():
        return path
    msg = f"real data not found at {path} (set MEDCLASS_DATA_ROOT to the shared data folder)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true but {msg}", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder (``../shared/data`` or ``$MEDCLASS_DATA_ROOT``)."""
    return _require(shared_data_dir())


@pytest.fixture(scope="session")
def dicom_samples(shared_data: Path) -> Path:
    return _require(shared_data / "dicom_samples")


@pytest.fixture(scope="session")
def nifti_samples(shared_data: Path) -> Path:
    return _require(shared_data / "nifti_samples")


@pytest.fixture(scope="session")
def kermany(shared_data: Path) -> Path:
    return _require(shared_data / "kermany_cxr_pneumonia_fullres")


@pytest.fixture(scope="session")
def medmnist(shared_data: Path) -> Path:
    return _require(shared_data / "medmnist")
