"""Strict config validation (jaxfault.core.config) and the numeric CLI flag types (jaxfault.cli)."""
import math

import pytest

from jaxfault.cli import ArgumentParser, as_flags, bounded_float, finite_float, nonneg_float, positive_int, probability, run_main
from jaxfault.core.config import Field, parse_float_list, validate
from jaxfault.core.errors import JaxfaultError, plain

FIELDS = [Field("seed", int, 0, min=0), Field("trials", int, 10, min=1),
          Field("ber", float, min=0, max=1), Field("dev_var", float, 0.1, min=0, min_open=True),
          Field("scheme", str, "sparrow", choices=("sparrow", "secded", "none")),
          Field("rates", list, [1e-3], items=float, min=0, max=1, nonempty=True, unique=True),
          Field("output", str, None, nullable=True),
          Field("block", int, 8, check=lambda v: v & (v - 1) == 0, requirement="a power of two")]


def test_defaults_filled_and_ints_accepted_for_floats():
    cfg = validate({"ber": 0, "rates": [1, 0.5]}, FIELDS)
    assert cfg == {"seed": 0, "trials": 10, "ber": 0.0, "dev_var": 0.1, "scheme": "sparrow",
                   "rates": [1.0, 0.5], "output": None, "block": 8}
    assert isinstance(cfg["ber"], float) and isinstance(cfg["rates"][0], float)


@pytest.mark.parametrize("cfg,match", [
    ({"ber": 1e-3, "shceme": "none"}, r"unknown field 'shceme' \(did you mean 'scheme'\?\)"),
    ({"ber": 1e-3, "seed": "zero"}, r"seed must be an integer, got 'zero'"),
    ({"ber": 1e-3, "trials": True}, r"trials must be an integer, got True"),
    ({"ber": 1e-3, "trials": 2.0}, r"trials must be an integer, got 2.0"),
    ({"ber": 1e-3, "trials": 0}, r"trials must be >= 1, got 0"),
    ({"ber": float("nan")}, r"ber must be a finite number, got nan"),
    ({"ber": 1e-3, "dev_var": float("inf")}, r"dev_var must be a finite number, got inf"),
    ({"ber": 1e-3, "dev_var": 0}, r"dev_var must be > 0, got 0.0"),
    ({"ber": 1.5}, r"ber must be >= 0 and <= 1, got 1.5"),
    ({"ber": True}, r"ber must be a number, got True"),
    ({}, r"missing required field 'ber'"),
    ({"ber": 1e-3, "output": 123}, r"output must be a string, got 123"),
    ({"ber": 1e-3, "scheme": "sparow"}, r"scheme must be one of sparrow, secded, none, got 'sparow' \(did you mean 'sparrow'\?\)"),
    ({"ber": 1e-3, "rates": []}, r"rates must not be empty"),
    ({"ber": 1e-3, "rates": [1e-3, 1e-3]}, r"rates: 0.001 is listed twice"),
    ({"ber": 1e-3, "rates": [1e-3, "x"]}, r"rates\[1\] must be a number, got 'x'"),
    ({"ber": 1e-3, "rates": 0.1}, r"rates must be a list, got 0.1"),
    ({"ber": 1e-3, "block": 6}, r"block must be a power of two, got 6"),
    ({"ber": None}, r"ber must be a number, got null"),
])
def test_bad_configs_are_one_line_errors(cfg, match):
    with pytest.raises(JaxfaultError, match=match) as e:
        validate(cfg, FIELDS, where="campaign config")
    assert str(e.value).startswith("campaign config: ") and "\n" not in str(e.value)


def test_non_mapping_and_numpy_values_print_plainly():
    import numpy as np

    with pytest.raises(JaxfaultError, match="must be a JSON object, got list"):
        validate([1], FIELDS)
    with pytest.raises(JaxfaultError, match=r"seed must be an integer, got 0.5$"):
        validate({"ber": 0.1, "seed": np.float64(0.5)}, FIELDS)
    assert repr(plain(np.float64(0.0))) == "0.0" and plain({"a": np.arange(2)}) == {"a": [0, 1]}


def _parse(type_, value):
    p = ArgumentParser(prog="t")
    p.add_argument("--x", type=type_)
    p.add_argument("--flag", action="store_true")
    return p.parse_args(["--x", value]).x


@pytest.mark.parametrize("type_,value,match", [
    (probability, "-1e-3", "must be in [0, 1], got '-1e-3'"),
    (probability, "nan", "must be a finite number, got 'nan'"),
    (probability, "1.5", "must be in [0, 1], got '1.5'"),
    (finite_float, "inf", "must be a finite number, got 'inf'"),
    (finite_float, "-inf", "must be a finite number, got '-inf'"),
    (nonneg_float, "-0.5", "must be >= 0, got '-0.5'"),
    (positive_int, "0", "must be >= 1, got '0'"),
    (positive_int, "-3", "must be >= 1, got '-3'"),
    (positive_int, "2.5", "must be an integer, got '2.5'"),
    (bounded_float(0, 1, high_open=True), "1", "must be in [0, 1), got '1'"),
    (finite_float, "abc", "must be a number, got 'abc'"),
])
def test_flag_types_name_flag_and_value(type_, value, match, capsys):
    with pytest.raises(SystemExit) as e:
        _parse(type_, value)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert f"argument --x: {match}" in err


def test_flag_types_accept_good_values_including_negative_numbers():
    assert _parse(probability, "1e-3") == 1e-3
    assert _parse(finite_float, "-1e-3") == -1e-3
    assert _parse(finite_float, "-.5") == -0.5
    assert _parse(positive_int, "7") == 7


def test_parse_float_list():
    assert parse_float_list("1e-3, 1e-2", "--sweep") == [1e-3, 1e-2]
    for text, match in [("", "needs a comma-separated list of numbers, got ''"), (None, "got ''"),
                        ("1e-3,1e-3", "'1e-3' is listed twice"), ("1,,2", "empty item"),
                        ("1,x", "'x' is not a number"), ("nan", "'nan' is not a finite number")]:
        with pytest.raises(JaxfaultError, match=match) as e:
            parse_float_list(text, "--sweep")
        assert str(e.value).startswith("--sweep") and "None" not in str(e.value)
    with pytest.raises(JaxfaultError, match=r"--ber values must be in \[0, 1\], got '2'"):
        parse_float_list("0.1,2", "--ber", check=lambda v: 0 <= v <= 1, requirement="in [0, 1]")
    assert parse_float_list("1,1", "--x", allow_duplicates=True) == [1.0, 1.0]
    assert math.isfinite(parse_float_list("-1e-3", "--x")[0])


@pytest.mark.parametrize("content,match", [(b"\xff\xfe", "cannot read campaign config"), (b"[1]", "must hold a JSON object, got list"),
                                           (b"{", "is not valid JSON")])
def test_unreadable_or_non_object_config_files_are_one_line(tmp_path, content, match):
    """One reader for campaign configs and plan files: bytes that are not UTF-8, a JSON list and
    malformed JSON are JaxfaultErrors naming the file, never a traceback."""
    from jaxfault.campaign.config import load_config
    from jaxfault.plan import load_plan

    f = tmp_path / "c.json"
    f.write_bytes(content)
    with pytest.raises(JaxfaultError, match=match):
        load_config(str(f))
    with pytest.raises(JaxfaultError, match=match.replace("campaign config", "plan file")):
        load_plan(f)


def test_library_settings_are_shown_as_flags_by_the_cli(capsys):
    """The library names a setting as `name`; a CLI's one-line error shows it as --name."""
    assert as_flags("`test_subset` must be in [1, 10], got 0") == "--test-subset must be in [1, 10], got 0"
    assert as_flags("x exists (set `overwrite` to replace it, or choose another `out`)") == \
        "x exists (set --overwrite to replace it, or choose another --out)"
    assert as_flags("no setting here: `Not_A_Setting` stays, 'quoted' stays") == \
        "no setting here: `Not_A_Setting` stays, 'quoted' stays"

    def main(argv):
        from jaxfault.campaign.distributed import initialize

        initialize(coordinator="host:1")

    with pytest.raises(SystemExit) as e:
        run_main(main, ["--no-compile-cache"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == ("error: give all of --coordinator, --num-processes and --process-id "
                                         "(or --distributed-auto)\n")
