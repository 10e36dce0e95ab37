"""The docs stand alone and say what the code does: no tracked file points at an outside
specification, every repository path README.md and docs/*.md mention exists, and every CLI's
--help states its defaults and has a real description."""
from __future__ import annotations

import argparse
import importlib
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = (".md", ".py", ".json", ".sh", ".toml", ".txt", ".cfg")
# built from pieces so that this file does not match its own patterns
OUTSIDE_SPEC = re.compile(r"\b" + "SP" + r"EC\b")
SHARED_DIR = "../" + "shared"


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / line for line in out.splitlines() if line.endswith(TEXT_SUFFIXES)]


def test_no_reference_to_an_outside_specification():
    bad = []
    for path in tracked_files():
        if not path.is_file():
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE_SPEC.search(line) or SHARED_DIR in line:
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not bad, "references to an outside specification:\n" + "\n".join(bad)


# a repository path: one of the project's folders, then path characters, ending in a file extension
PATH_TOKEN = re.compile(r"(?<![\w./-])((?:docs|bench|examples|eval|train|jaxfault|tests|scripts|\.ci)/"
                        r"[\w./*-]*\.[A-Za-z]{1,5})(?![\w/-])")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def mentioned_paths(path: Path) -> set[str]:
    text = path.read_text()
    found = set(PATH_TOKEN.findall(text))
    # image links relative to docs/ (![](img/x.png) inside docs/*.md)
    if path.parent.name == "docs":
        found |= {"docs/" + m for m in re.findall(r"\]\((img/[\w./-]+)\)", text)}
    return {p.rstrip(".") for p in found}


def test_docs_mention_only_existing_paths():
    missing = []
    for doc in doc_files():
        for p in sorted(mentioned_paths(doc)):
            if "*" in p:
                if not list(ROOT.glob(p)):
                    missing.append(f"{doc.relative_to(ROOT)}: {p} (no match)")
            elif not (ROOT / p).exists():
                missing.append(f"{doc.relative_to(ROOT)}: {p}")
    assert not missing, "paths named in the docs that do not exist:\n" + "\n".join(missing)


def test_path_pattern_finds_paths():
    """The pattern above is what the previous test relies on: check it on known text."""
    text = "see `jaxfault/energy/core.py`, docs/img/swim_sweep.png and (tests/test_energy*.py); runs/x.json"
    assert set(PATH_TOKEN.findall(text)) == {"jaxfault/energy/core.py", "docs/img/swim_sweep.png",
                                             "tests/test_energy*.py"}


CLI_MODULES = sorted(f"{folder}.{p.stem}" for folder in ("eval", "train")
                     for p in (ROOT / folder).glob("*.py") if p.stem != "__init__")


def test_every_cli_has_build_parser():
    without = [m for m in CLI_MODULES if not hasattr(importlib.import_module(m), "build_parser")]
    assert not without, f"CLIs without build_parser(): {without}"


def _shows_default(action: argparse.Action) -> bool:
    d = action.default
    if d is None or d is False or d is argparse.SUPPRESS:
        return False
    return not isinstance(action, (argparse._HelpAction, argparse._VersionAction))


@pytest.mark.parametrize("module", CLI_MODULES)
def test_cli_help_states_defaults_and_describes_the_command(module):
    mod = importlib.import_module(module)
    if not hasattr(mod, "build_parser"):
        pytest.skip("no build_parser (test_every_cli_has_build_parser fails)")
    parser = mod.build_parser()
    description = (parser.description or "").strip()
    assert description, f"{module}: empty description"
    assert "module docstring" not in description, f"{module}: description points at the module docstring"
    assert not OUTSIDE_SPEC.search(parser.format_help())
    bad = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        # exactly what format_help() prints for this option (invocation + help text)
        text = " ".join(parser._get_formatter()._format_action(action).split())
        if not action.help:
            bad.append(f"{action.option_strings[0]}: no help text")
        if _shows_default(action) and "default" not in text and str(action.default) not in text:
            bad.append(f"{action.option_strings[0]}: default {action.default!r} not shown in {text!r}")
    assert not bad, f"{module} --help:\n" + "\n".join(bad)
