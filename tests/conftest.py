"""Shared fixtures: where the real data live, and how their absence is handled.

Real-data tests read ``../shared/data`` (next to the checkout) or ``$MEDCLASS_DATA_ROOT``. On a user's clone
without it they skip with a reason; under CI (``CI=true``) a missing folder is an error, so real-data
tests never skip silently there.
"""

from __future__ import annotations

import os
import shutil
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


# Disk: a full run trains and saves dozens of ~100 MB checkpoints. Function-level ``tmp_path`` folders of
# passing tests are removed by pytest itself (``tmp_path_retention_policy = "failed"`` in pyproject.toml);
# the folders module fixtures make with ``tmp_path_factory.mktemp`` are removed when their module ends,
# unless a test failed in it (kept for a look). Without this one run left ~17 GB in /tmp and a CI machine
# ran out of disk.
_made: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def _track_mktemp(tmp_path_factory: pytest.TempPathFactory):
    original = tmp_path_factory.mktemp

    def mktemp(basename: str, numbered: bool = True) -> Path:
        path = original(basename, numbered)
        _made.append(path)
        return path

    tmp_path_factory.mktemp = mktemp  # type: ignore[method-assign]
    yield
    tmp_path_factory.mktemp = original  # type: ignore[method-assign]


@pytest.fixture(scope="module", autouse=True)
def _module_tmp_cleanup(request: pytest.FixtureRequest, _track_mktemp):
    start, failed = len(_made), request.session.testsfailed
    yield
    made = _made[start:]
    del _made[start:]
    if request.session.testsfailed == failed:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
