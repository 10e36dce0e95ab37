"""eval.tradeoff's rows: one method and one label per row (method + the configuration that tells
the row apart), read from report files shaped like eval.sparrow, eval.swim and eval.neuralfuse
write them; the table never cuts a label. Hand-built layer lists, no tracing: fast."""
import json

import pytest

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


def top1(mean):
    return {"mean": mean, "std": 0.01, "min": mean - 0.02}


def test_labels_of_eval_reports(tmp_path):
    sparrow_run = {"checkpoint": "x", "clean_bf16": {"top1": 0.9}, "scheme": "sparrow", "block_size": 64,
                   "stored_bits_per_weight": 18, "ber": 1e-3, "zero_to_one": 0.01, "top1": top1(0.89),
                   "fault_free": {"top1": 0.9}}
    sparrow_sweep = {"checkpoint": "x", "clean_bf16": {"top1": 0.9}, "rows": [
        {"scheme": s, "block_size": bs, "stored_bits_per_weight": b, "ber": ber, "top1": top1(acc),
         "fault_free": {"top1": 0.9}}
        for s, bs, b, acc in (("sparrow", 64, 18, 0.88), ("secded", 4, 18, 0.85), ("none", 64, 16, 0.3))
        for ber in (1e-5, 1e-3)]}
    swim = {"model": "lenet", "dataset": "fashion_mnist", "config": {"n_bits": 8, "mask_p": 0.05},
            "none": {"mean": 0.4, "std": 0.1}, "all": {"mean": 0.89, "std": 0.0},
            "selected": [{"method": m, "mask_p": p, "fraction_protected": p, "mean": a, "std": 0.02}
                         for m, a in (("SM", 0.85), ("magnitude", 0.6)) for p in (0.01, 0.05)]}
    neuralfuse = {"generator": "UNetS", "base_model": "lenet", "dataset": "fashion_mnist",
                  "clean": {"without": 0.9, "with": 0.89},
                  "results": [{"ber": b, "perturbed_without": top1(a0), "perturbed_with": top1(a1), "recovery": a1 - a0}
                              for b, a0, a1 in ((0.005, 0.8, 0.85), (0.01, 0.7, 0.8))]}
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


def test_explicit_label_wins_and_table_never_cuts(tmp_path):
    long_label = "a label much longer than any column width used before"
    rows = rows_of(tmp_path, {"points.json": {"method": "swim", "points": [
        {"mask_p": 0.05, "accuracy_mean": 0.8, "label": long_label},
        {"mask_p": 0.123456789, "accuracy_mean": 0.7, "selection": "random"}]}})
    assert {r["label"] for r in rows} == {long_label, "swim random"}
    table = T.format_rows(rows)
    assert long_label in table and "mask_p=0.123457" in table and "swim random" in table
    lines = table.splitlines()
    col = lines[0].index("accuracy")
    assert all(line[col:col + 8].strip() in ("accuracy", "0.8000", "0.7000") for line in lines)


def test_campaign_results_file(tmp_path):
    """eval.campaign suggests eval.tradeoff on its JSON-lines results: header, rows, a torn last line."""
    header = {"jaxfault_results": 1, "identity": {"dataset": "fashion_mnist", "seed": 0, "trials": 2}}
    rows = [{"config": {"method": "sparrow", "scheme": s, "ber": b, "zero_to_one": 0.01, "block_size": 64},
             "accuracy": [0.8, 0.9], "accuracy_mean": 0.85, "accuracy_std": 0.05, "fault_rate_mean": b}
            for s in ("sparrow", "secded", "none") for b in (1e-4, 1e-3)]
    rows.append({"config": {"method": "bitflip", "ber": 1e-3}, "accuracy_mean": 0.5, "accuracy_std": 0.1})
    rows.append({"config": {"method": "swim", "dev_var": 0.1, "mask_p": 0.05, "selection": "magnitude"},
                 "accuracy_mean": 0.8, "accuracy_std": 0.01})
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(o) for o in [header, *rows]) + '\n{"config": {"meth')
    skipped = []
    recs = T.load_records([str(path)], skipped=skipped)
    assert [r["method"] for r in skipped] == ["bitflip"]
    out = T.tradeoff(recs, lambda model, shape: NET, **KW)
    assert sorted({r["label"] for r in out}) == ["none", "secded", "sparrow B64", "swim magnitude"]
    assert all(r["source"] == str(path) for r in out)
    # rows with per-trial accuracies carry their interval (jaxfault.core.stats), rows without show n/a
    from jaxfault.core.stats import mean_ci

    lo, hi = mean_ci([0.8, 0.9])
    sp = [r for r in out if r["label"] == "sparrow B64"]
    assert all(r["accuracy_ci"] == [pytest.approx(lo), pytest.approx(hi)] for r in sp)
    assert next(r for r in out if r["label"] == "swim magnitude")["accuracy_ci"] is None
    table = T.format_rows(out)
    assert f"[{lo:.4f}, {hi:.4f}]" in table and "n/a" in table
    with pytest.raises(Exception):
        T.load_records([str(path)])  # without a list for them, rows without an energy model are an error
