"""eval.energy / eval.tradeoff bad inputs (issue 15, gaps 5 and 10): NaN, inf, zero and negative numbers,
malformed tables and grids, and output paths, each one line with exit 2 before any work; results
not replaced without --overwrite."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eval import energy as energy_cli
from eval import tradeoff as tradeoff_cli
from jaxfault.cli import run_main

REPO = Path(__file__).resolve().parents[1]
NET = ["--network", "lenet"]


def run(mod, argv, capsys):
    with pytest.raises(SystemExit) as e:
        run_main(mod.main, argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.mark.parametrize("argv,match", [
    (["--voltage", "nan"], "--voltage: 'nan' is not a finite number"),
    (["--ber", "nan"], "--ber: 'nan' is not a finite number"),
    (["--ber", "-1e-3"], "--ber values must be in (0, 1], got '-1e-3'"),
    (["--ber", "1e-3,1e-3"], "'1e-3' is listed twice"),
    (["--ber", ""], "--ber needs a comma-separated list of numbers, got ''"),
    (["--refresh-interval", "nan"], "--refresh-interval: 'nan' is not a finite number"),
    (["--refresh-interval", "0"], "--refresh-interval values must be > 0, got '0'"),
    (["--voltage", "inf"], "not a finite number"),
    (["--v-nominal", "0"], "argument --v-nominal: must be > 0, got '0'"),
    (["--v-nominal", "nan"], "argument --v-nominal: must be a finite number, got 'nan'"),
    (["--dram", "inf"], "argument --dram: must be a finite number, got 'inf'"),
    (["--dram", "-1e-3"], "argument --dram: must be >= 0, got '-1e-3'"),
    (["--pe-rows", "0"], "argument --pe-rows: must be >= 1"),
    (["--ecc-read-scaling", "1.5"], "argument --ecc-read-scaling: must be in [0, 1]"),
    (["--inference-period", "0"], "argument --inference-period: must be > 0"),
    (["--num-classes", "-3"], "argument --num-classes: must be >= 1, got '-3'"),
    (["--weight-bits", "0"], "argument --weight-bits: must be >= 1"),
    (["--verify-fraction", "0.5,nan"], "'nan' is not a finite number"),
    (["--qw", "8,x"], "--qw: 'x' is not a number"),
    (["--ecc", "hamming"], "unknown ECC scheme 'hamming'"),
    (["--input", "28,28"], "argument --input: must be three positive integers H,W,C, got '28,28'"),
])
def test_energy_numbers(argv, match, capsys):
    code, out, err = run(energy_cli, NET + argv, capsys)
    assert code == 2 and err.count("\n") == 1 and match in err and out == ""  # before any table is printed


@pytest.mark.parametrize("content,match", [
    ("{not json", "--retention-table: cannot read"), ('[[0.064, "a"], [1, 1e-3]]', "row 0 of"),
    ("[[0.064, 1e-9]]", "at least two [x, ber] pairs"), ('{"rows": []}', "without a 'table' list"),
    ("[[0.064, NaN], [1, 1e-3]]", "two finite numbers"), ("[[1, 2, 3], [1, 2]]", "row 0 of")])
def test_malformed_retention_table(tmp_path, content, match, capsys):
    t = tmp_path / "t.json"
    t.write_text(content)
    for flag, opt in (("--retention-table", ["--ecc", "sparrow"]), ("--voltage-table", ["--voltage", "0.8"])):
        code, _, err = run(energy_cli, NET + opt + [flag, str(t)], capsys)
        assert code == 2 and err.count("\n") == 1 and match.replace("--retention-table", flag) in err
    code, _, err = run(energy_cli, NET + ["--retention-table", str(tmp_path / "missing.json")], capsys)
    assert code == 2 and "No such file" in err


@pytest.mark.parametrize("grid,match", [
    ({"qw": ["a"]}, "--grid['qw']: 'a' is not a finite number"), ({"qww": [8]}, "did you mean 'qw'"),
    ({"qw": [8, 8]}, "8 is listed twice"), ({"qw": []}, "non-empty list"), ({"qw": 8}, "non-empty list"),
    ({"pw": [0.0, 1.0]}, "pw (pruning ratio) must be in [0, 1), got 1.0"), ([1], "non-empty JSON object")])
def test_malformed_grid(tmp_path, grid, match, capsys):
    g = tmp_path / "g.json"
    g.write_text(json.dumps(grid))
    code, _, err = run(energy_cli, NET + ["--grid", str(g)], capsys)
    assert code == 2 and err.count("\n") == 1 and match in err


def test_energy_outputs_checked_first_and_not_replaced(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    (tmp_path / "dir" / "energy.json").mkdir(parents=True)
    for argv, match in [(["--out", str(afile / "r")], "is a file, not a directory"),
                        (["--out", str(afile)], "is a file, expected a directory"),
                        (["--out", str(tmp_path / "dir")], "is a directory"),
                        (["--plots"], "--plots draws into the output folder: give --out")]:
        code, out, err = run(energy_cli, NET + argv, capsys)
        assert code == 2 and match in err and err.count("\n") == 1 and out == ""  # nothing computed
    assert afile.read_text() == "keep"
    out_dir = tmp_path / "e"
    assert run(energy_cli, NET + ["--out", str(out_dir)], capsys)[0] == 0
    code, _, err = run(energy_cli, NET + ["--out", str(out_dir)], capsys)
    assert code == 2 and "energy.json already exists (set --overwrite" in err
    code, out, err = run(energy_cli, NET + ["--out", str(out_dir), "--overwrite"], capsys)
    assert code == 0 and "totals" in json.loads((out_dir / "energy.json").read_text())
    plots = tmp_path / "plots"
    assert run(energy_cli, NET + ["--out", str(plots), "--plots"], capsys)[0] == 0
    (plots / "energy.json").unlink()
    code, _, err = run(energy_cli, NET + ["--out", str(plots), "--plots"], capsys)
    assert code == 2 and "bars_by_type.png already exists" in err
    (plots / "other.png").write_bytes(b"x")  # a folder holding other files is fine when no name clashes
    assert run(energy_cli, NET + ["--out", str(plots), "--plots", "--overwrite"], capsys)[0] == 0


def _results(tmp_path):
    from jaxfault.core.rows import make_row, report

    p = tmp_path / "sparrow.json"
    rows = [make_row(fault_model="hbm", method="sparrow", fault={"scheme": s}, rate_name="ber", rate=ber, trials=20,
                     metric="top1", summary={"mean": acc}, **point)
            for s, ber, acc, point in (("sparrow", 1e-6, 0.9, {}), ("none", 1e-4, 0.5, {"refresh_interval_s": 1.0}))]
    p.write_text(json.dumps(report(rows, model="lenet")))
    return p


def test_tradeoff_outputs_and_numbers(tmp_path, capsys):
    res = _results(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("keep")
    for argv, match in [(["--out", str(afile / "t")], "is a file, not a directory"),
                        (["--out", str(afile)], "is a file, expected a directory"),
                        (["--v-nominal", "nan"], "argument --v-nominal: must be a finite number"),
                        (["--pj-per-unit", "-1"], "argument --pj-per-unit: must be > 0, got '-1'"),
                        (["--ecc-read-scaling", "2"], "must be in [0, 1]"),
                        (["--retention-table", str(afile)], "--retention-table: cannot read")]:
        code, out, err = run(tradeoff_cli, [str(res)] + argv, capsys)
        assert code == 2 and match in err and err.count("\n") == 1 and out == ""
    assert afile.read_text() == "keep"
    out_dir = tmp_path / "t"
    assert run(tradeoff_cli, [str(res), "--out", str(out_dir)], capsys)[0] == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["tradeoff.json", "tradeoff.png"]
    code, _, err = run(tradeoff_cli, [str(res), "--out", str(out_dir)], capsys)
    assert code == 2 and "tradeoff.json already exists" in err
    assert run(tradeoff_cli, [str(res), "--out", str(out_dir), "--overwrite"], capsys)[0] == 0


def test_tradeoff_does_not_import_eval_energy():
    code = "import sys, eval.tradeoff; print('eval.energy' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
