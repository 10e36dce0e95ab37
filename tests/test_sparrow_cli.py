"""eval.sparrow and eval.exponents CLIs: outputs on a tiny checkpoint, bad input -> exit 2."""
import json

import numpy as np
import pytest

from eval import exponents as exp_cli
from eval import sparrow as sp_cli


def run(main, argv):
    with pytest.raises(SystemExit) as e:
        from jaxfault.cli import run_main

        run_main(main, argv)
    return e.value.code


@pytest.mark.parametrize("argv,needle", [
    (["--ber", "2"], "argument --ber: must be in [0, 1], got '2'"),
    (["--ber", "nan"], "argument --ber: must be a finite number, got 'nan'"),
    (["--ber", "-1e-3"], "argument --ber: must be in [0, 1], got '-1e-3'"),
    (["--ber=-1e-3"], "got '-1e-3'"),
    (["--ber", "1e-3", "--zero-to-one", "1.5"], "argument --zero-to-one: must be in [0, 1], got '1.5'"),
    (["--ber", "1e-3", "--block-size", "48"], "block_size for scheme 'sparrow' must be one of 16, 32, 64, got 48"),
    (["--ber", "1e-3", "--sweep", "1e-3"], "exactly one of --ber or --sweep"),
    (["--sweep", "1e-3,abc"], "'abc' is not a number"),
    (["--sweep", "1e-3,3"], "got '3'"),
    (["--sweep", "1e-3,1e-3"], "listed twice"),
    (["--sweep", ""], "--sweep"),
    (["--ber", "1e-3", "--trials", "0"], "argument --trials: must be >= 1, got '0'"),
    (["--ber", "1e-3", "--seed", "-1"], "argument --seed: must be >= 0, got '-1'"),
    (["--ber", "1e-3", "--seed", "18446744073709551616"], "argument --seed: must be <= 4294967295 (the key derivation"),
    (["--ber", "1e-3", "--limit", "0"], "argument --limit: must be >= 1, got '0'"),
    (["--ber", "1e-3", "--batch-size", "1.5"], "argument --batch-size"),
    (["--ber", "1e-3", "--checkpoint", "/nonexistent/ck"], "/nonexistent/ck"),
    (["--ber", "1e-3", "--scheme", "parity"], "unknown ECC scheme 'parity'"),
    (["--ber", "1e-3", "--scheme", "sparow"], "did you mean 'sparrow'"),
    (["--ber", "1e-3", "--strategy", "vamp"], "argument --strategy"),
    (["--ber", "1e-3", "--precision", "fp64"], "argument --precision"),
    (["--ber", "1e-3", "--out", "/etc/passwd/x"], "/etc/passwd"),
    (["--ber", "1e-3", "--compute-dtype", "fp16"], "argument --compute-dtype"),
    (["--ber", "1e-3", "--compute-dtype", "float32", "--estimator", "stratified"],
     "--compute-dtype float32 needs --estimator plain"),
    (["--ber", "1e-3", "--ci-width", "0"], "argument --ci-width: must be > 0, got '0'"),
    (["--ber", "1e-3", "--max-trials", "50"], "--max-trials 50 needs --ci-width"),
    (["--ber", "1e-3", "--ci-width", "0.01", "--max-trials", "5"], "--max-trials 5 must be >= --trials 20"),
])
def test_sparrow_cli_bad_input_exit_2(argv, needle, capsys, monkeypatch):
    """One line, exit 2, before any model is loaded (loading would raise here)."""
    import jaxfault.experiment.ecc_eval as ev

    monkeypatch.setattr(ev, "load_classifier_and_data", lambda *a, **k: pytest.fail("work started"))
    assert run(sp_cli.main, argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


def test_sparrow_cli_single_run(lenet_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--ber", "1e-2", "--zero-to-one", "0.01", "--block-size", "32", "--trials", "2",
            "--checkpoint", str(lenet_checkpoint), "--out", str(out), "--limit", "100"]
    assert run(sp_cli.main, argv) == 0
    text = capsys.readouterr().out
    # the main job shows what the protection buys: SEC-DED and no protection beside Sparrow, labelled
    assert "clean bf16: top1" in text and "top-1 % mean [95 % interval]" in text and "worst trial %" in text
    table = [ln.split()[0] for ln in text.splitlines() if ln.split() and ln.split()[0] in ("sparrow", "secded", "none")]
    assert table == ["sparrow", "secded", "none"]
    assert "weights changed: share of the protected weights" in text and "drop: points of top-1" in text
    assert "evaluated sparrow at 1 BER(s) (1/3 schemes" in text and "s left)" in text   # the run's time left
    name = out / "sparrow_ber0.01_q0.01_B32_T2_s0_n100.json"
    r = json.loads(name.read_text())
    assert r["trials"] == 2 and len(r["top1"]["values"]) == 2 and "top5" in r
    assert 0.005 < r["realised_ber"]["mean"] < 0.02 and 0 < r["changed_fraction"]["mean"] < 0.2
    assert r["stored_bits_per_weight"] == 18 and r["evaluation_dtype"] == "bfloat16"
    assert r["top1"]["min"] <= r["top1"]["mean"] <= r["top1"]["max"]
    assert abs(r["fault_free"]["top1"] - r["clean_bf16"]["top1"]) <= 0.02   # encoding alone costs little
    assert [c["scheme"] for c in r["comparison"]] == ["secded", "none"]
    assert r["comparison"][1]["stored_bits_per_weight"] == 16
    assert r["config"]["schemes"] == ["sparrow", "secded", "none"] and r["checkpoint_digest"].startswith("sha256:")
    # the same command again succeeds and says it replaced the result of the same configuration ...
    name.write_text(name.read_text().replace('"seconds"', '"seconds_stale"', 1))   # to see it rewritten
    assert run(sp_cli.main, argv) == 0
    text = capsys.readouterr().out
    assert f"wrote {name}" in text and "replaced the earlier result of this configuration" in text
    again = json.loads(name.read_text())
    assert "seconds_stale" not in again
    assert again["top1"]["values"] == r["top1"]["values"] and again["comparison"][1]["top1"] == r["comparison"][1]["top1"]
    # ... another configuration writing to the same file is refused, the result kept
    before = name.read_bytes()
    assert run(sp_cli.main, argv + ["--strategy", "loop"]) == 2
    err = capsys.readouterr().err
    assert "already exists with another configuration (strategy differ)" in err and err.count("\n") == 1
    assert name.read_bytes() == before
    # ... and another trial count, seed or image limit gets its own file
    assert run(sp_cli.main, argv[:-1] + ["200", "--no-compare"]) == 0
    only = json.loads((out / "sparrow_ber0.01_q0.01_B32_T2_s0_n200_only.json").read_text())
    assert "comparison" not in only and only["scheme"] == "sparrow"
    # trials until a target width: chunks of --trials, the trials run and why they stopped recorded
    assert run(sp_cli.main, argv + ["--ci-width", "0.3", "--max-trials", "5", "--no-compare"]) == 0
    w = json.loads((out / "sparrow_ber0.01_q0.01_B32_T2_s0_n100_w0.3_max5_only.json").read_text())
    assert w["stop"] in ("width", "max_trials") and w["trials"] == len(w["top1"]["values"]) == w["top1"]["n"]
    assert w["trials"] in (2, 4, 5) and (w["stop"] == "width") == (w["top1"]["half_width"] <= 0.3)
    assert w["top1"]["values"][:2] == r["top1"]["values"]          # trial i draws the same faults
    text = capsys.readouterr().out                                  # the table says how many ran and why they stopped
    assert f"{w['trials']} trials per scheme (stopped: {w['stop']}" in text


def test_sparrow_cli_compute_dtype_float32(lenet_checkpoint, tmp_path, capsys):
    """--compute-dtype float32: its own result file, recorded and labelled; the default file name
    and configuration of a bf16 run are unchanged (earlier results stay comparable)."""
    out = tmp_path / "out"
    argv = ["--ber", "1e-2", "--trials", "2", "--checkpoint", str(lenet_checkpoint), "--out", str(out), "--limit", "50",
            "--no-compare"]
    assert run(sp_cli.main, argv + ["--compute-dtype", "float32"]) == 0
    assert "clean bf16 (float32 arithmetic): top1" in capsys.readouterr().out
    r = json.loads((out / "sparrow_ber0.01_q0.01_B64_T2_s0_n50_float32_only.json").read_text())
    assert r["evaluation_dtype"] == "float32" and r["config"]["compute_dtype"] == "float32"
    assert run(sp_cli.main, argv) == 0
    b = json.loads((out / "sparrow_ber0.01_q0.01_B64_T2_s0_n50_only.json").read_text())
    assert b["evaluation_dtype"] == "bfloat16" and "compute_dtype" not in b["config"]
    assert r["n_faults"]["values" if "values" in r["n_faults"] else "mean"] == \
        b["n_faults"]["values" if "values" in b["n_faults"] else "mean"]          # the same faults, other arithmetic


def test_sparrow_rerun_refuses_a_result_of_another_model(lenet_checkpoint, tmp_path, capsys):
    """A stored result whose configuration matches but whose model changed is not replaced."""
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(lenet_checkpoint, ck)
    out = tmp_path / "out"
    argv = ["--ber", "1e-2", "--trials", "1", "--checkpoint", str(ck), "--out", str(out), "--limit", "20",
            "--no-compare"]
    assert run(sp_cli.main, argv) == 0
    name = next(out.glob("*.json"))
    stored = json.loads(name.read_text())
    stored["checkpoint_digest"] = "sha256:" + "0" * 64           # as if the model had been retrained
    name.write_text(json.dumps(stored))
    capsys.readouterr()
    assert run(sp_cli.main, argv) == 2
    err = capsys.readouterr().err
    assert "came from another model" in err and err.count("\n") == 1
    assert json.loads(name.read_text())["checkpoint_digest"] == "sha256:" + "0" * 64
    name.write_text("{}")                                           # a file that records no configuration
    assert run(sp_cli.main, argv) == 2 and "records no configuration" in capsys.readouterr().err
    assert run(sp_cli.main, argv + ["--overwrite"]) == 0


@pytest.mark.slow
def test_sparrow_cli_sweep(lenet_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    code = run(sp_cli.main, ["--sweep", "0,0.3", "--trials", "2", "--checkpoint", str(lenet_checkpoint),
                             "--out", str(out), "--limit", "100", "--strategy", "loop"])
    assert code == 0
    s = json.loads((out / "sweep_T2_s0_n100.json").read_text())
    assert sorted((r["scheme"], r["ber"]) for r in s["rows"]) == sorted((n, b) for b in (0.0, 0.3) for n in ("sparrow", "secded", "none"))
    clean = s["clean_bf16"]["top1"]
    none0 = next(r for r in s["rows"] if r["scheme"] == "none" and r["ber"] == 0.0)
    assert none0["top1"]["mean"] == clean                            # no faults, no ECC: the clean model
    worst = [r["top1"]["mean"] for r in s["rows"] if r["ber"] == 0.3]
    assert max(worst) < clean                                        # 30 % of cells stuck: all schemes suffer
    assert (out / "sweep_T2_s0_n100.png").stat().st_size > 1000 and "| BER |" in (out / "sweep_T2_s0_n100.md").read_text()


def test_exponents_cli(lenet_checkpoint, tmp_path, capsys):
    out = tmp_path / "exp"
    assert run(exp_cli.main, ["--checkpoint", str(lenet_checkpoint), "--block-size", "32", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "zero policy: reference" in text
    r = json.loads((out / "exponents_B32_reference.json").read_text())
    assert len(r["counts"]) == 129 and sum(r["counts"]) == r["blocks_counted"]
    assert abs(sum(r["proportions"]) - 1) < 1e-9
    csv = (out / "exponents_B32_reference.csv").read_text().splitlines()
    assert csv[0] == "diff,count,proportion" and len(csv) == 130
    assert (out / "exponents_B32_reference.png").exists()
    openpyxl = pytest.importorskip("openpyxl")
    wb = openpyxl.load_workbook(out / "exponents_B32_reference.xlsx")
    assert wb.sheetnames == ["Count", "Proportion"]
    assert [c.value for c in wb["Count"][2]][1:] == r["counts"]
    assert run(exp_cli.main, ["--checkpoint", str(lenet_checkpoint), "--exclude-zeros", "--out", str(out)]) == 0
    assert "zero policy: exclude-zeros" in capsys.readouterr().out
    assert run(exp_cli.main, ["--block-size", "1", "--checkpoint", str(lenet_checkpoint)]) == 2
    assert "--block-size must be >= 2, got 1" in capsys.readouterr().err


def test_exponent_histogram_zero_policies():
    from jaxfault.ecc.exponents import block_differences, histogram

    def word(e):
        return np.uint32(e << 23)
    blk_a = np.array([word(120), word(100)] + [word(110)] * 2, np.uint32)      # diff 20
    blk_b = np.array([word(120), 0, word(119), word(118)], np.uint32)          # zero: 255 - 118 > 128 -> dropped
    blk_c = np.array([word(130), 0, word(128), word(129)], np.uint32)          # zero, all >= 127: 255 - 128 = 127 counted
    blk_d = np.zeros(4, np.uint32)                                             # all zero
    w = np.concatenate([blk_a, blk_b, blk_c, blk_d, np.array([word(1)], np.uint32)])
    np.testing.assert_array_equal(block_differences(w, 4), [20, -1, 127, 0])
    np.testing.assert_array_equal(block_differences(w, 4, exclude_zeros=True), [20, 2, 2, -1])
    np.testing.assert_array_equal(block_differences(w, 4, include_partial=True), [20, -1, 127, 0, 0])
    h = histogram(w, 4)
    assert h["counts"][20] == h["counts"][127] == h["counts"][0] == 1 and h["blocks_dropped"] == 1
    assert h["zero_policy"] == "reference"
