"""Running a CLI's main in-process as its entry point does, for the bad-input tests."""
import importlib

import pytest

from jaxfault.cli import run_main


def run_cli(module, argv, capsys):
    """(exit code, stdout, stderr) of `python -m <module> <argv>`, run through jaxfault.cli.run_main."""
    mod = importlib.import_module(module)
    with pytest.raises(SystemExit) as e:
        run_main(mod.main, argv)
    captured = capsys.readouterr()
    return e.value.code, captured.out, captured.err


def one_error_line(code, err, *needles):
    """Assert exit code 2 and exactly one 'error: ...' line holding every needle; return the line."""
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, err)
    return lines[0]
