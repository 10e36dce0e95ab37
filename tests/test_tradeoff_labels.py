"""eval.tradeoff's rows: one method and one label per row (method + the configuration that tells
the row apart), read from reports in the row schema as eval.sparrow, eval.swim and
eval.neuralfuse write them; the table never cuts a label. Hand-built layer lists, no tracing: fast."""
import json

import pytest

from jaxfault.core.rows import make_row, report
from jaxfault.energy import conv, fc
from jaxfault.energy import protection as P
from jaxfault.energy import tradeoff as T
from jaxfault.energy.analysis import evaluate

NET = [conv("c0", 3, 1, 4, 12, padding=1), fc("f0", 4 * 12 * 12, 10)]
GEN = [conv("g0", 3, 1, 8, 12, padding=1), conv("g1", 3, 8, 1, 12, padding=1)]
KW = dict(dram_kw={}, retention_table=P.RETENTION_BER_TABLE, voltage_table=P.VOLTAGE_BER_TABLE, v_nominal=1.0,
          write_verify=P.WriteVerify())


def rows_of(tmp_path, files: dict):
    paths = []
    for name, obj in files.items():
        p = tmp_path / name
        p.write_text(json.dumps(obj))
        paths.append(str(p))
    records = T.load_records(paths)
    return T.tradeoff(records, lambda model, shape: NET, generator_layers_for=lambda name, shape, model: GEN, **KW)


def acc_row(fault_model, method, rate_name, rate, mean, *, fault=None, std=0.01, **point):
    return make_row(fault_model=fault_model, method=method, fault=fault or {}, rate_name=rate_name, rate=rate,
                    trials=20, metric="top1", summary={"mean": mean, "std": std}, **point)


def hbm_row(scheme, block_size, bits, ber, mean):
    return acc_row("hbm", "sparrow", "ber", ber, mean, fault={"scheme": scheme, "block_size": block_size},
                   stored_bits_per_weight=bits)


def test_labels_of_eval_reports(tmp_path):
    sparrow_run = report([hbm_row("sparrow", 64, 18, 1e-3, 0.89)], checkpoint="x")
    sparrow_sweep = report([hbm_row(s, bs, b, ber, acc)
                            for s, bs, b, acc in (("sparrow", 64, 18, 0.88), ("secded", 4, 18, 0.85), ("none", 64, 16, 0.3))
                            for ber in (1e-5, 1e-3)], checkpoint="x")
    swim = report([acc_row("cim", "swim", "dev_var", 0.1, 0.4, std=0.1, selection="none", mask_p=0.0),
                   acc_row("cim", "swim", "dev_var", 0.1, 0.89, std=0.0, selection="all", mask_p=1.0)]
                  + [acc_row("cim", "swim", "dev_var", 0.1, a, std=0.02, selection=m, mask_p=p)
                     for m, a in (("SM", 0.85), ("magnitude", 0.6)) for p in (0.01, 0.05)],
                  model="lenet", dataset="fashion_mnist")
    neuralfuse = report([acc_row("sram", "neuralfuse", "ber", b, a, generator=g)
                         for b, a0, a1 in ((0.005, 0.8, 0.85), (0.01, 0.7, 0.8))
                         for g, a in ((None, a0), ("UNetS", a1))], model="lenet", dataset="fashion_mnist")
    rows = rows_of(tmp_path, {"sparrow_ber0.001_q0.01_B64_T20_s0.json": sparrow_run, "sweep_T10_s0.json": sparrow_sweep,
                              "swim.json": swim, "neuralfuse_eval.json": neuralfuse})
    labels = {}
    for r in rows:
        labels.setdefault(r["family"], set()).add((r["method"], r["label"]))
    assert labels["dram"] == {("sparrow", "sparrow B64"), ("secded", "secded"), ("none", "none")}
    assert labels["verify"] == {("swim", "swim none"), ("swim", "swim all"), ("swim", "swim SM"),
                                ("swim", "swim magnitude")}
    assert labels["sram"] == {("neuralfuse", "neuralfuse UNetS"), ("neuralfuse", "neuralfuse none")}
    # no file name ever becomes a method or a label
    assert not any("sparrow_ber" in r["label"] or "sweep" in r["label"] or "sweep" in r["method"] for r in rows)
    # one row per configuration and operating point
    assert len(rows) == 1 + 6 + (2 + 4) + 4
    sm = sorted((r for r in rows if r["label"] == "swim SM"), key=lambda r: r["operating_point"]["mask_p"])
    assert [r["accuracy_mean"] for r in sm] == [0.85, 0.85] and sm[0]["accuracy_std"] == 0.02
    # the generator's own energy (GEN, not the classifier NET) is added to the rows with it
    with_g = {r["operating_point"]["ber"]: r for r in rows if r["label"] == "neuralfuse UNetS"}
    without = {r["operating_point"]["ber"]: r for r in rows if r["label"] == "neuralfuse none"}
    v = with_g[0.01]["voltage"]
    gen_e = float(P.total_energy_at_voltage(evaluate(GEN, 16, 16, 0.0), v, 1.0))
    assert with_g[0.01]["energy"] - without[0.01]["energy"] == pytest.approx(gen_e, rel=1e-5)
    assert with_g[0.01]["accuracy_mean"] == 0.8 and without[0.01]["accuracy_mean"] == 0.7


def test_files_in_another_form_are_refused_in_one_line(tmp_path):
    """Only the row schema is read: an older report shape, a bare list of points or a row without
    its summary is one line naming the file, not a guess."""
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"method": "swim", "points": [{"mask_p": 0.05, "accuracy_mean": 0.8}]}))
    with pytest.raises(Exception, match="is not a jaxfault.rows/1 report or a campaign results file"):
        T.load_records([str(old)])
    bad = tmp_path / "bad.json"
    row = acc_row("cim", "swim", "dev_var", 0.1, 0.8, mask_p=0.05)
    del row["summary"]
    bad.write_text(json.dumps(report([row])))
    with pytest.raises(Exception, match="row 1: summary must be an object with a numeric 'mean'"):
        T.load_records([str(bad)])


def test_explicit_label_wins_and_table_never_cuts(tmp_path):
    long_label = "a label much longer than any column width used before"
    rows = rows_of(tmp_path, {"points.json": report([
        acc_row("cim", "swim", "dev_var", 0.1, 0.8, mask_p=0.05, label=long_label),
        acc_row("cim", "swim", "dev_var", 0.1, 0.7, mask_p=0.123456789, selection="random")])})
    assert {r["label"] for r in rows} == {long_label, "swim random"}
    table = T.format_rows(rows)
    assert long_label in table and "mask_p=0.123457" in table and "swim random" in table
    lines = table.splitlines()
    col = lines[0].index("accuracy")
    assert all(line[col:col + 8].strip() in ("accuracy", "0.8000", "0.7000") for line in lines)


def test_campaign_results_file(tmp_path):
    """eval.campaign suggests eval.tradeoff on its JSON-lines results: header, rows in the row
    schema (a campaign's own keys beside them), a torn last line."""
    header = {"jaxfault_results": 1, "identity": {"dataset": "fashion_mnist", "seed": 0, "trials": 2}}
    rows = [{"config": {"method": "sparrow", "scheme": s, "ber": b}, "accuracy": [0.8, 0.9],
             **make_row(fault_model="hbm", method="sparrow", fault={"scheme": s, "block_size": 64}, rate_name="ber",
                        rate=b, trials=2, metric="top1", summary={"mean": 0.85, "std": 0.05, "ci_lo": 0.4,
                                                                 "ci_hi": 0.99})}
            for s in ("sparrow", "secded", "none") for b in (1e-4, 1e-3)]
    rows.append(acc_row("bitflip", "bitflip", "ber", 1e-3, 0.5))
    rows.append(acc_row("cim", "swim", "dev_var", 0.1, 0.8, mask_p=0.05, selection="magnitude"))
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(o) for o in [header, *rows]) + '\n{"config": {"meth')
    skipped = []
    recs = T.load_records([str(path)], skipped=skipped)
    assert [r["method"] for r in skipped] == ["bitflip"]
    out = T.tradeoff(recs, lambda model, shape: NET, **KW)
    assert sorted({r["label"] for r in out}) == ["none", "secded", "sparrow B64", "swim magnitude"]
    assert all(r["source"] == str(path) for r in out)
    # the interval a row carries is the one shown; a row without one shows n/a
    sp = [r for r in out if r["label"] == "sparrow B64"]
    assert all(r["accuracy_ci"] == [0.4, 0.99] for r in sp)
    assert next(r for r in out if r["label"] == "swim magnitude")["accuracy_ci"] is None
    table = T.format_rows(out)
    assert "[0.4000, 0.9900]" in table and "n/a" in table
    with pytest.raises(Exception, match="fault model 'bitflip' has no energy model"):
        T.load_records([str(path)])  # without a list for them, rows without an energy model are an error
