"""One row schema (jaxfault.core.rows): the outputs of eval.run, eval.sparrow, eval.swim and a
campaign, as the CLIs write them, read together by eval.tradeoff with no guessing of their shape;
the schema's own checks are one line each."""
import json

import pytest

from jaxfault.cli import run_main
from jaxfault.core import rows as R
from jaxfault.core.errors import JaxfaultError


def run(main, argv):
    with pytest.raises(SystemExit) as e:
        run_main(main, argv)
    return e.value.code


def test_every_cli_output_and_a_campaign_in_one_tradeoff(lenet_checkpoint, tmp_path, capsys):
    from eval import campaign as campaign_cli
    from eval import run as run_cli
    from eval import sparrow as sparrow_cli
    from eval import swim as swim_cli
    from eval import tradeoff as tradeoff_cli

    ck = str(lenet_checkpoint)
    assert run(run_cli.main, ["--fault-model", "hbm", "--set", "scheme=secded", "--rates", "1e-3", "--trials", "2",
                              "--limit", "100", "--checkpoint", ck, "--out", str(tmp_path / "run"),
                              "--no-compile-cache"]) == 0
    assert run(sparrow_cli.main, ["--ber", "1e-3", "--scheme", "sparrow", "--trials", "2", "--limit", "100",
                                  "--checkpoint", ck, "--out", str(tmp_path / "sp")]) == 0
    assert run(swim_cli.main, ["--checkpoint", ck, "--method", "magnitude", "--mask-p", "0.1", "--noise-instances",
                               "2", "--test-examples", "100", "--eval-batch", "100", "--out",
                               str(tmp_path / "swim")]) == 0
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"checkpoint": ck, "eval_examples": 100, "trials": 2, "out": str(tmp_path / "c"),
                               "grid": [{"method": "sparrow", "scheme": ["none"], "ber": [1e-4, 1e-3]},
                                        {"method": "bitflip", "ber": [1e-4]}]}))
    assert run(campaign_cli.main, [str(cfg), "--no-compile-cache"]) == 0
    files = [tmp_path / "run" / "results.json", next((tmp_path / "sp").glob("sparrow_*.json")),
             tmp_path / "swim" / "swim.json", tmp_path / "c" / "results.jsonl"]
    for f in files:                      # every row of every file is a row of the schema
        context, rows = R.read(f)
        assert rows and all(r["metric"] == "top1" and 0 <= r["summary"]["mean"] <= 1 for r in rows)
    capsys.readouterr()
    assert run(tradeoff_cli.main, [*map(str, files), "--out", str(tmp_path / "t")]) == 0
    printed = capsys.readouterr()
    points = json.loads((tmp_path / "t" / "tradeoff.json").read_text())["points"]
    assert {(p["family"], p["label"]) for p in points} == {
        ("dram", "secded"), ("dram", "sparrow B64"), ("dram", "none"),
        ("verify", "swim none"), ("verify", "swim all"), ("verify", "swim magnitude")}
    # eval.run 1, eval.sparrow 3 (one BER: sparrow with its comparison schemes secded and none),
    # eval.swim 3 (none, all and magnitude at 0.1), the campaign 2 (its bitflip row has no energy model)
    assert len(points) == 1 + 3 + 3 + 2
    assert "skipped 1 row(s) of bitflip" in printed.out + printed.err
    # the numbers are the files' own: eval.run's secded row, read back
    run_row = json.loads((tmp_path / "run" / "results.json").read_text())["rows"][0]
    sec = next(p for p in points if p["label"] == "secded")
    assert sec["accuracy_mean"] == run_row["top1"]["mean"] == run_row["summary"]["mean"]
    assert sec["accuracy_ci"] == [run_row["summary"]["ci_lo"], run_row["summary"]["ci_hi"]]


def test_a_row_is_checked_in_one_line(tmp_path):
    good = R.make_row(fault_model="hbm", method="sparrow", fault={}, rate_name="ber", rate=1e-3, trials=2,
                      metric="top1", summary={"mean": 0.9})
    assert R.check_row(dict(good), "x") == good and good["ber"] == 1e-3
    for change, match in [({"rate": -1}, r"the rate \(ber\) must be a finite number >= 0"),
                          ({"metric": "accuracy"}, "metric must be top1"),
                          ({"trials": 0}, "trials must be an integer >= 1"),
                          ({"summary": {"median": 3.0}}, "numeric 'mean'"),
                          ({"fault_model": None}, "needs a 'fault_model' string")]:
        with pytest.raises(JaxfaultError, match=match):
            R.check_row({**good, **change}, "f.json: row 1")
    lm = {**good, "metric": "perplexity", "summary": {"median": 5.0}}
    assert R.check_row(lm, "x") is lm
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"schema": R.ROW_SCHEMA, "model": "lenet", "rows": [good]}))
    assert R.read(p) == ({"model": "lenet"}, [good])
    p.write_text(json.dumps({"schema": "jaxfault.rows/0", "rows": [good]}))
    with pytest.raises(JaxfaultError, match="is not a jaxfault.rows/1 report or a campaign results file"):
        R.read(p)


def test_a_format_sweep_is_rows_and_only_bf16_words_are_priced(lenet_checkpoint, tmp_path, capsys):
    """eval.vulnerability --sweep writes rows too: one per (format, scheme, BER); eval.tradeoff
    prices the bfloat16 rows (16-bit words) and lists the fp8 ones as skipped."""
    from eval import tradeoff as tradeoff_cli
    from eval import vulnerability as vulnerability_cli

    assert run(vulnerability_cli.main, ["--checkpoint", str(lenet_checkpoint), "--formats", "bfloat16,float8_e4m3fn",
                                        "--schemes", "none", "--sweep", "1e-4,1e-3", "--trials", "2", "--limit", "100",
                                        "--out", str(tmp_path / "v")]) == 0
    (path,) = (tmp_path / "v").glob("*.json")
    context, rows = R.read(path)
    assert [(r["fault"]["format"], r["ber"]) for r in rows] == [(f, b) for f in ("bfloat16", "float8_e4m3fn")
                                                              for b in (1e-4, 1e-3)]
    assert [r["stored_bits_per_weight"] for r in rows] == [16, 16, 8, 8]
    capsys.readouterr()
    assert run(tradeoff_cli.main, [str(path), "--out", str(tmp_path / "t")]) == 0
    points = json.loads((tmp_path / "t" / "tradeoff.json").read_text())["points"]
    assert [(p["label"], p["operating_point"]["ber"]) for p in points] == [("none", 1e-4), ("none", 1e-3)]
    assert "skipped 2 row(s) of vulnerability" in capsys.readouterr().out
