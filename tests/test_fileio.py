"""medclass.fileio: atomic writes honour the umask; PHI-capable files stay owner-only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from medclass.fileio import atomic_write_bytes, atomic_write_text, current_umask, write_csv


@pytest.fixture()
def umask():
    def set_(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    os.umask(old)
    yield set_
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_outputs_honour_the_umask_and_private_ones_are_0600(tmp_path, umask, mask) -> None:
    umask(mask)
    assert current_umask() == mask
    atomic_write_text(tmp_path / "report.html", "<p>x</p>")
    atomic_write_bytes(tmp_path / "fig.png", b"\x89PNG")
    write_csv(tmp_path / "scores.csv", [{"a": 1}], ["a"])
    plain = tmp_path / "plain.txt"
    plain.write_text("as open() does")
    for name in ("report.html", "fig.png", "scores.csv"):
        assert _mode(tmp_path / name) == _mode(plain) == 0o666 & ~mask, name
    atomic_write_bytes(tmp_path / "sc.dcm", b"DICM", private=True)
    write_csv(tmp_path / "phi.csv", [{"a": 1}], ["a"], private=True)
    assert _mode(tmp_path / "sc.dcm") == _mode(tmp_path / "phi.csv") == 0o600
