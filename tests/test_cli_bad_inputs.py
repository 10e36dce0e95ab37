"""Every CLI flag that takes a number, a path or a name: bad input is one `error:` line and exit 2,
before any model, data or checkpoint loads.

Numbers are enumerated from the parsers themselves (every option typed with one of
jaxfault.cli's flag types gets NaN, inf, a non-number and an out-of-range value), so a new
numeric flag is covered without editing this file. Names and paths are listed per CLI.
"""
import importlib

import pytest

from jaxfault import cli as jcli
from tests._cli_run import run_cli as _run

CLIS = ["eval.accuracy", "eval.campaign", "eval.energy", "eval.exponents", "eval.neuralfuse", "eval.plan",
        "eval.sparrow", "eval.swim", "eval.tradeoff", "train.base", "train.neuralfuse"]
# arguments that make the rest of a command line valid (required options / positionals)
BASE_ARGS = {"eval.neuralfuse": ["--generator-checkpoint", "/nonexistent-gen"], "eval.campaign": ["c.json"],
             "eval.plan": ["p.json"], "eval.tradeoff": ["r.json"], "eval.sparrow": ["--ber", "1e-3"]}
NUMERIC_TYPES = {"finite_float", "positive_float", "nonneg_float", "probability", "unit_interval_open",
                 "positive_int", "nonneg_int", "any_int", "bounded_float", "seed_int"}


def _parser(module):
    return importlib.import_module(module).build_parser()


def _numeric_flags():
    out = []
    for module in CLIS:
        for action in _parser(module)._actions:
            name = getattr(action.type, "__name__", "")
            if action.option_strings and name in NUMERIC_TYPES and getattr(action.type, "__module__", "") == jcli.__name__:
                out.append((module, action.option_strings[-1], name))
    return out


NUMERIC = _numeric_flags()


def _bad_values(type_name):
    """Values the flag type must refuse: non-numbers, non-finite, and out of its range."""
    bad = ["x", "nan", "inf", ""]
    if type_name.endswith("_int"):
        bad += ["1.5"]
    if type_name in ("positive_float", "positive_int"):
        bad += ["0", "-1"]
    if type_name in ("nonneg_float", "nonneg_int", "probability", "unit_interval_open", "seed_int"):
        bad += ["-1e-3"]
    if type_name == "seed_int":
        bad += [str(2**32)]
    if type_name == "probability":
        bad += ["1.5"]
    if type_name == "unit_interval_open":
        bad += ["1"]
    return bad


def test_numeric_flags_are_enumerated():
    """Sanity: the parsers really use the flag types (a regression to type=float would drop flags)."""
    per_cli = {m: sum(1 for mm, _, _ in NUMERIC if mm == m) for m in CLIS}
    assert all(n >= 1 for m, n in per_cli.items() if m not in ("eval.accuracy",)), per_cli
    assert len(NUMERIC) >= 60


@pytest.mark.parametrize("module,flag,type_name", NUMERIC, ids=[f"{m}{f}" for m, f, _ in NUMERIC])
def test_every_numeric_flag_refuses_bad_values_in_one_line(module, flag, type_name, capsys):
    for value in _bad_values(type_name):
        code, out, err = _run(module, BASE_ARGS.get(module, []) + [f"{flag}={value}"], capsys)
        assert code == 2, (module, flag, value, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "error:" in lines[0] and flag in lines[0], (module, flag, value, err)
        assert value in lines[0] or value == "", (module, flag, value, err)


NAMES = [
    ("eval.sparrow", ["--ber", "1e-3", "--scheme", "sparow"], "sparow"),
    ("eval.sparrow", ["--ber", "1e-3", "--strategy", "vamp"], "vamp"),
    ("eval.swim", ["--method", "SMM"], "SMM"),
    ("eval.swim", ["--curvature", "becker"], "becker"),
    ("eval.swim", ["--threshold", "counts"], "counts"),
    ("eval.neuralfuse", ["--generator-checkpoint", "/nonexistent-gen", "--placement", "memoryarray"], "memoryarray"),
    ("train.neuralfuse", ["--generator", "UNetX"], "UNetX"),
    ("train.neuralfuse", ["--placement", "indep"], "indep"),
    ("train.neuralfuse", ["--layout", "pytorch"], "pytorch"),
    ("eval.neuralfuse", ["--generator-checkpoint", "/nonexistent-gen", "--layout", "tf"], "tf"),
    ("train.neuralfuse", ["--model", "lenett"], "lenett"),
    ("train.base", ["--model", "resnet19", "--epochs", "1"], "resnet19"),
    ("train.base", ["--dataset", "mnistt", "--epochs", "1"], "mnistt"),
    ("eval.energy", ["--network", "alexnett"], "alexnett"),
    ("eval.energy", ["--ecc", "secdead"], "secdead"),
    ("eval.tradeoff", ["/nonexistent.json", "--network", "alexnett"], None),
]


@pytest.mark.parametrize("module,argv,value", NAMES, ids=[f"{m}:{a[-1]}" for m, a, _ in NAMES])
def test_bad_names_one_line(module, argv, value, capsys):
    code, _, err = _run(module, argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "error:" in lines[0], err
    if value is not None:
        assert value in lines[0], err


PATHS = [
    ("eval.accuracy", ["--checkpoint", "/nonexistent-ck"]),
    ("eval.exponents", ["--checkpoint", "/nonexistent-ck"]),
    ("eval.sparrow", ["--ber", "1e-3", "--checkpoint", "/nonexistent-ck"]),
    ("eval.swim", ["--checkpoint", "/nonexistent-ck"]),
    ("eval.neuralfuse", ["--generator-checkpoint", "/nonexistent-gen"]),
    ("train.neuralfuse", ["--checkpoint", "/nonexistent-ck"]),
    ("train.neuralfuse", ["--init-generator", "/nonexistent-gen"]),
    ("eval.campaign", ["/nonexistent-config.json"]),
    ("eval.plan", ["/nonexistent-plan.json"]),
    ("eval.tradeoff", ["/nonexistent-results.json"]),
    ("eval.energy", ["--retention-table", "/nonexistent-table.json"]),
]


@pytest.mark.parametrize("module,argv", PATHS, ids=[f"{m}:{a[-1]}" for m, a in PATHS])
def test_missing_input_paths_one_line(module, argv, capsys):
    code, _, err = _run(module, argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "error:" in lines[0] and "nonexistent" in lines[0], err


OUTPUTS = [
    ("eval.sparrow", ["--ber", "1e-3", "--out", "{f}/x"]),
    ("eval.exponents", ["--out", "{f}/x"]),
    ("eval.swim", ["--out", "{f}/x"]),
    ("eval.neuralfuse", ["--generator-checkpoint", "/nonexistent-gen", "--out", "{f}/x"]),
    ("eval.energy", ["--out", "{f}/x"]),
    ("eval.energy", ["--out", "{f}/x", "--plots"]),
    ("train.base", ["--out", "{f}/x", "--epochs", "1"]),
    ("train.neuralfuse", ["--out", "{f}/x"]),
]


@pytest.mark.parametrize("module,argv", OUTPUTS, ids=[f"{m}:{a[-2]}" for m, a in OUTPUTS])
def test_output_under_a_file_is_refused_before_work(module, argv, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("keep me")
    code, _, err = _run(module, [a.format(f=f) for a in argv], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "error:" in lines[0], err
    assert f.read_text() == "keep me"
