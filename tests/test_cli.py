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


def _fake_command(monkeypatch, run, resume: bool):
    """Swap the inspect command's run (and maybe give it a --resume flag) for this test."""
    import medclass.cli.inspect as inspect_cmd

    monkeypatch.setattr(inspect_cmd, "run", run)
    add = inspect_cmd.add_arguments

    def add_arguments(parser):
        add(parser)
        if resume:
            parser.add_argument("--resume", action="store_true")

    monkeypatch.setattr(inspect_cmd, "add_arguments", add_arguments)


@pytest.mark.parametrize("resume", [True, False])
def test_interrupted_mentions_resume_where_there_is_one(monkeypatch, capsys, tmp_path, resume):
    def run(args):
        raise KeyboardInterrupt

    _fake_command(monkeypatch, run, resume)
    assert main(["inspect", str(tmp_path)]) == ExitCode.INTERRUPTED
    err = capsys.readouterr().err
    assert "interrupted" in err
    assert ("--resume" in err) is resume


def test_library_warnings_are_one_line_each(monkeypatch, capsys, tmp_path):
    import warnings as w

    def run(args):
        w.warn("Invalid value for VR UI:\n '1.2.x'", UserWarning, stacklevel=1)
        return 0

    _fake_command(monkeypatch, run, False)
    previous = w.showwarning
    with w.catch_warnings():
        w.simplefilter("always")
        assert main(["inspect", str(tmp_path)]) == 0
        assert w.showwarning is previous  # restored
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("WARNING UserWarning: Invalid value for VR UI: '1.2.x' (test_cli.py:")


def test_long_runs_of_warnings_are_summarised(monkeypatch, capsys, tmp_path):
    import logging
    import warnings as w

    def run(args):
        log = logging.getLogger("medclass.dataset")
        for i in range(40):
            log.warning("%s: skipped: %s", f"img{i}.png", "no such file")
            w.warn(f"bad value in file {i}", UserWarning, stacklevel=1)
        log.warning("something else")
        return 0

    _fake_command(monkeypatch, run, False)
    with w.catch_warnings():
        w.simplefilter("always")
        assert main(["inspect", str(tmp_path)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert sum("skipped: no such file" in line for line in err) == 5
    assert sum("WARNING UserWarning: bad value" in line for line in err) == 5
    assert "something else" in "\n".join(err)
    assert any("35 more like '%s: skipped: %s' not shown" in line for line in err), err
    assert any(
        line.startswith("WARNING UserWarning at test_cli.py:") and "35 more" in line for line in err
    ), err
