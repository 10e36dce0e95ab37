"""What a CLI process sets up, and who sets it up: jaxfault.cli.run_main (the process's entry)
imports $JAXFAULT_PLUGINS and turns on the compilation cache; building and parsing a CLI's
arguments (what a test or a notebook calling main() does) changes no process-wide setting."""
import sys

import jax
import pytest

from _cli_run import one_error_line, run_cli
from jaxfault.cli import run_main


def test_parsing_arguments_changes_no_process_wide_setting(tmp_path, monkeypatch):
    import eval.sparrow as sp_cli

    probe = "jaxfault_probe_plugin_parse"
    (tmp_path / f"{probe}.py").write_text("IMPORTED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("JAXFAULT_PLUGINS", probe)
    before = jax.config.jax_compilation_cache_dir
    sp_cli.build_parser().parse_args(["--ber", "1e-3"])
    assert jax.config.jax_compilation_cache_dir == before
    assert probe not in sys.modules


def test_run_main_imports_the_plugins_before_the_command(tmp_path, monkeypatch):
    probe = "jaxfault_probe_plugin_run"
    (tmp_path / f"{probe}.py").write_text("IMPORTED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("JAXFAULT_PLUGINS", probe)
    seen = []

    def main(argv):
        seen.append(probe in sys.modules)
        return 0

    with pytest.raises(SystemExit) as e:
        run_main(main, ["--no-compile-cache"])
    assert e.value.code == 0 and seen == [True]


def test_a_missing_plugin_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("JAXFAULT_PLUGINS", "no_such_jaxfault_plugin")
    code, out, err = run_cli("eval.accuracy", ["--no-compile-cache"], capsys)
    one_error_line(code, err, "JAXFAULT_PLUGINS", "no_such_jaxfault_plugin")
    assert out == ""
