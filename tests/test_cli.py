from __future__ import annotations

import subprocess
import sys

import pytest

from medclass import __version__
from medclass.cli import COMMANDS, ExitCode, build_parser, main


def test_version(capsys):
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_no_command_prints_help_and_usage_code(capsys):
    assert main([]) == ExitCode.USAGE
    assert "commands" in capsys.readouterr().out


def test_every_command_has_help(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sub.choices, "no command registered"
    for name in sub.choices:
        assert name in COMMANDS
        assert main([name, "--help"]) == 0
        out = capsys.readouterr().out
        assert f"medclass {name}" in out
        assert "(default: None)" not in out, name


def test_help_shows_real_defaults_only(capsys):
    for argv in (["manifest", "build", "--help"], ["manifest", "check", "--help"], ["score", "--help"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "(default: None)" not in out, argv
    assert main(["score", "--help"]) == 0
    assert "(default: fp32)" in capsys.readouterr().out  # a real default is still shown


def test_help_is_fast_and_imports_no_torch():
    code = "import sys; from medclass.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_unknown_command_is_usage_error(capsys):
    assert main(["no-such-command"]) == ExitCode.USAGE
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("traceback", [False, True])
def test_error_boundary_one_line(tmp_path, capsys, traceback):
    from medclass.errors import MedclassError

    missing = tmp_path / "nope.dcm"
    args = (["--traceback"] if traceback else []) + ["inspect", str(missing)]
    if "inspect" not in COMMANDS:
        pytest.skip("inspect not built")
    if traceback:
        # --traceback re-raises medclass errors instead of one line; a missing path is such an error.
        try:
            code = main(args)
        except MedclassError:
            return
        assert code != 0
    else:
        code = main(args)
        assert code != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) >= 1 and "nope.dcm" in err[-1]
