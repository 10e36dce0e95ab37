"""Protection energy, the eval.energy and eval.tradeoff CLIs (in-process), exit codes."""
import json
import math
import sys
import types

import flax.linen as nn
import numpy as np
import pytest

from eval import energy as energy_cli
from eval import tradeoff as tradeoff_cli
from jaxfault.cli import run_main
from jaxfault.energy import get_network, protection as P
from jaxfault.energy.analysis import evaluate
from jaxfault.energy.core import LEVELS
from jaxfault.core.errors import JaxfaultError


class TinyNet(nn.Module):
    """A small user model for the CLI tests (TINY)."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(4, (3, 3), padding=1, name="c1")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(8, (3, 3), padding="VALID", name="c2")(x))
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.num_classes, name="fc")(x)


# registered as a module of its own, so 'module:attribute' works whatever pytest's import mode
TINY = "energy_test_models:TinyNet"


@pytest.fixture(autouse=True)
def _tiny_module(monkeypatch):
    mod = types.ModuleType("energy_test_models")
    mod.TinyNet = TinyNet
    monkeypatch.setitem(sys.modules, "energy_test_models", mod)


def run(mod, argv):
    with pytest.raises(SystemExit) as e:
        run_main(mod.main, argv)
    return e.value.code


# ------------------------------------------------------------------ protection functions


def test_refresh_energy_formula_and_ecc_bits():
    assert [P.ecc_stored_bits(s) for s in ("none", "secded", "sparrow", "sparrow-b16", 20)] == [16, 18, 18, 19, 20]
    for bad in ("hamming", 12):
        with pytest.raises(JaxfaultError):
            P.ecc_stored_bits(bad)
    # 1e6 bits, 0.06 pJ/bit per refresh, 1.6 pJ/unit, refreshed every 64 ms, held 1/30 s
    e = float(P.dram_refresh_energy(1e6, 0.064, pj_per_bit=0.06, period_s=1 / 30, pj_per_unit=1.6))
    assert e == pytest.approx(1e6 * (0.06 / 1.6) * ((1 / 30) / 0.064), rel=1e-6)
    assert float(P.dram_refresh_energy(1e6, 0.128)) == pytest.approx(float(P.dram_refresh_energy(1e6, 0.064)) / 2, rel=1e-6)
    # storage: kept weights * qw * stored/16
    assert float(P.weight_storage_bits(np.array([100.0, 10.0]), np.array([16.0, 8.0]), np.array([0.5, 0.0]), 18)) == pytest.approx((50 * 16 + 10 * 8) * 18 / 16)
    assert P.REFRESH_PJ_PER_BIT == pytest.approx(0.150 * 1.2 * 350e-9 / 2**20 * 1e12)


def test_retention_table_reproduces_raidr_points_and_inverts():
    bits = 32 * 2**30 * 8
    assert float(P.retention_ber(0.128)) == pytest.approx(30 / bits, rel=1e-4)
    assert float(P.retention_ber(0.256)) == pytest.approx(1000 / bits, rel=1e-4)
    t = np.array([0.1, 0.3, 1.0, 3.0])
    b = np.asarray(P.retention_ber(t))
    assert np.all(np.diff(b) > 0)
    np.testing.assert_allclose(np.asarray(P.interval_for_ber(b)), t, rtol=1e-3)
    with pytest.raises(JaxfaultError):
        P.retention_ber(1.0, [(0.1, 1e-3), (0.2, 1e-4)])  # BER must rise with the interval


def test_sram_voltage_scaling():
    net = get_network(TINY, (12, 12, 1))
    e = evaluate(net.layers, 8, 8, 0.0)
    data = np.asarray(e.data, np.float64)
    sram = data[:, :, [LEVELS.index("GLB"), LEVELS.index("RF")]].sum((1, 2))
    np.testing.assert_allclose(np.asarray(P.sram_energy(e, 1.0)), sram, rtol=1e-6)
    # ECC read overhead: full scaling multiplies DRAM weight reads by 18/16, none leaves them
    np.testing.assert_allclose(np.asarray(P.dram_weight_energy_with_ecc(e, 18)), data[:, 0, 0] * 18 / 16, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(P.dram_weight_energy_with_ecc(e, 18, 0.0)), data[:, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(P.dram_weight_energy_with_ecc(e, 18, 0.5)), data[:, 0, 0] * (1 + 0.5 / 8), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(P.sram_energy(e, 0.5)), sram / 4, rtol=1e-6)
    v = np.array([0.8, 0.9, 1.0])
    tot = np.asarray(P.total_energy_at_voltage(e, v))
    np.testing.assert_allclose(tot, float(e.total) - sram.sum() * (1 - v**2), rtol=1e-5)
    # default table: anchored at 24 % saving <-> 1 % BER (NeuralFuse headline), BER falls with V
    assert float(P.voltage_for_ber(1e-2)) == pytest.approx(math.sqrt(0.76), rel=1e-4)
    vs = np.linspace(0.85, 0.99, 6)
    bers = np.asarray(P.voltage_ber(vs))
    assert np.all(np.diff(bers) < 0)
    np.testing.assert_allclose(np.asarray(P.voltage_for_ber(bers)), vs, rtol=1e-4)


def test_write_verify_cycles():
    m = P.WriteVerify()  # 8 devices per weight, 10 iterations per verified device, 1 plain pulse
    assert float(P.write_verify_cycles(100, 0.0, m)) == pytest.approx(800)
    assert float(P.write_verify_cycles(100, 1.0, m)) == pytest.approx(8000)
    assert float(P.write_verify_cycles(100, 0.1, m)) == pytest.approx(800 * 0.9 + 8000 * 0.1)
    assert float(P.relative_write_verify_cost(0.0, m)) == pytest.approx(0.1)
    with pytest.raises(JaxfaultError):
        P.write_verify_cycles(100, 0.5, P.WriteVerify(weight_bits=8, bits_per_device=3))


# ------------------------------------------------------------------ eval.energy


def test_energy_cli_alexnet_reference_json_and_plots(tmp_path, capsys):
    out = tmp_path / "plots" / "energy.json"
    code = run(energy_cli, ["--network", "alexnet", "--qw", "reference", "--qa", "reference", "--pw", "reference",
                            "--out", str(tmp_path / "plots"), "--plots", "--ecc", "sparrow",
                            "--refresh-interval", "0.064,1", "--voltage", "0.9", "--verify-fraction", "0,0.5"])
    assert code == 0
    rep = json.loads(out.read_text())
    keys = {"name", "computation", "weights", "inputs", "psums", "DRAM", "GLB", "NoC", "RF", "total"}
    assert all(keys <= set(r) for r in rep["layers"]) and len(rep["layers"]) == 8
    net = get_network("alexnet")
    from jaxfault.energy import ALEXNET_REFERENCE as R

    e = evaluate(net.layers, R["qw"], R["qa"], R["pw"])
    np.testing.assert_allclose([r["total"] for r in rep["layers"]], np.asarray(e.per_layer), rtol=1e-6)
    for r in rep["layers"]:
        assert r["total"] == pytest.approx(r["computation"] + r["weights"] + r["inputs"] + r["psums"], rel=1e-9)
        assert r["total"] == pytest.approx(r["computation"] + r["DRAM"] + r["GLB"] + r["NoC"] + r["RF"], rel=1e-6)
    assert rep["totals"]["total"] == pytest.approx(float(e.total), rel=1e-5)
    pts = rep["protection"]["dram_refresh"]["points"]
    assert pts[0]["refresh_energy"] == pytest.approx(pts[1]["refresh_energy"] / 0.064, rel=1e-5)
    assert rep["protection"]["sram_voltage"]["points"][0]["sram_saving"] == pytest.approx(0.19)
    assert [q["relative_to_full_verify"] for q in rep["protection"]["write_verify"]["points"]] == pytest.approx([0.1, 0.55])
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["bars_by_level.png", "bars_by_type.png", "energy.json", "pie_by_layer.png", "pie_by_level.png",
                     "pie_by_type.png"]
    assert "TOTAL" in capsys.readouterr().out


def test_energy_cli_sweep_and_grid(tmp_path):
    out = tmp_path / "s" / "energy.json"
    assert run(energy_cli, ["--network", TINY, "--input", "12,12,1", "--sweep-bits", "2..4", "--out", str(out.parent)]) == 0
    sw = json.loads(out.read_text())["sweep"]
    assert sw["num_points"] == 9 and all(p["pareto"] for p in sw["points"])  # energy rises with each bit
    layers = get_network(TINY, (12, 12, 1)).layers
    for p in sw["points"]:
        assert p["total"] == pytest.approx(float(evaluate(layers, p["qw"], p["qa"], 0.0).total), rel=1e-5)
    grid = tmp_path / "g.json"
    grid.write_text(json.dumps({"qw": [4, 8], "pw": [0.0, 0.5, [0.1, 0.2, 0.3]], "pe_rows": [6, 12], "dram": [100, 200]}))
    out2 = tmp_path / "g" / "energy.json"
    assert run(energy_cli, ["--network", TINY, "--input", "12,12,1", "--grid", str(grid), "--out", str(out2.parent)]) == 0
    pts = json.loads(out2.read_text())["sweep"]["points"]
    assert len(pts) == 2 * 3 * 2 * 2
    from jaxfault.energy import Hardware

    for p in pts:
        want = float(evaluate(layers, p["qw"], 16, p["pw"], Hardware(dram=p["dram"], pe_rows=p["pe_rows"])).total)
        assert p["total"] == pytest.approx(want, rel=1e-5)
    # a point with more pruning, fewer bits, same energy class cannot dominate: check the flag by brute force
    obj = np.array([[p["total"], -p["mean_qw"], -p["mean_qa"], p["mean_pw"]] for p in pts])
    for i, p in enumerate(pts):
        dominated = any(np.all(obj[j] <= obj[i]) and np.any(obj[j] < obj[i]) for j in range(len(pts)))
        assert p["pareto"] == (not dominated)
    assert (out2.parent / "pareto.csv").read_text().startswith("qw,pw,pe_rows,dram,")


@pytest.mark.parametrize(
    "argv",
    [
        ["--network", "no_such_net"],
        ["--network", TINY, "--input", "12,12,1", "--qw", "0"],
        ["--network", TINY, "--input", "12,12,1", "--qa", "-4"],
        ["--network", TINY, "--input", "12,12,1", "--pw", "1"],
        ["--network", TINY, "--input", "12,12,1", "--pw", "-0.2"],
        ["--network", TINY, "--input", "2,2,1"],  # 3x3 kernel larger than the 1x1 pooled map
        ["--network", TINY, "--input", "12,12,0"],
        ["--network", TINY, "--input", "12,12,1", "--qw", "reference"],
        ["--network", TINY, "--input", "12,12,1", "--qw", "8,8"],  # 3 layers
        ["--network", TINY, "--input", "12,12,1", "--sweep-bits", "9..2"],
        ["--network", TINY, "--input", "12,12,1", "--pe-rows", "0"],
        ["--network", TINY, "--input", "12,12,1", "--pe-rows", "x"],  # argparse usage error
        ["--network", TINY, "--input", "12,12,1", "--ecc", "hamming"],
        ["--network", TINY, "--input", "12,12,1", "--voltage", "0"],
        ["--network", TINY, "--input", "12,12,1", "--verify-fraction", "1.5"],
    ],
)
def test_energy_cli_bad_input_exits_2(argv, capsys):
    assert run(energy_cli, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and "error" in err[-1]


def test_energy_cli_bad_grid(tmp_path):
    g = tmp_path / "g.json"
    g.write_text(json.dumps({"qz": [1, 2]}))
    assert run(energy_cli, ["--network", TINY, "--input", "12,12,1", "--grid", str(g)]) == 2
    g.write_text(json.dumps({"pw": [0.0, 1.0]}))
    assert run(energy_cli, ["--network", TINY, "--input", "12,12,1", "--grid", str(g)]) == 2


# ------------------------------------------------------------------ eval.tradeoff


def _row(fault_model, rate_name, rate, mean, **point):
    from jaxfault.core.rows import make_row

    return make_row(fault_model=fault_model, method=fault_model, fault=point.pop("fault", {}), rate_name=rate_name,
                    rate=rate, trials=20, metric="top1", summary={"mean": mean, **point.pop("summary", {})}, **point)


def _report(tmp_path, name, rows, **context):
    from jaxfault.core.rows import report

    path = tmp_path / name
    path.write_text(json.dumps(report(rows, **context)))
    return path


def test_tradeoff_cli(tmp_path):
    ctx = dict(model=TINY, input_shape=[12, 12, 1])
    sp = _report(tmp_path, "sparrow.json", [
        _row("hbm", "ber", 1e-6, 0.90, fault={"scheme": "sparrow"}, label="sparrow"),
        _row("hbm", "ber", 1e-4, 0.50, fault={"scheme": "none"}, refresh_interval_s=1.0, label="unprotected")], **ctx)
    nf = _report(tmp_path, "nf.json", [
        _row("sram", "ber", float(P.voltage_ber(0.9)), 0.70, voltage=0.9),
        _row("sram", "ber", float(P.voltage_ber(0.8)), 0.75, voltage=0.8),
        _row("sram", "ber", 1e-2, 0.60)], **ctx)
    sw = _report(tmp_path, "swim.json", [_row("cim", "dev_var", 0.1, a, mask_p=p)
                                         for p, a in ((0.0, 0.5), (0.1, 0.8), (0.2, 0.7))], **ctx)
    out, png = tmp_path / "t" / "tradeoff.json", tmp_path / "t" / "tradeoff.png"
    assert run(tradeoff_cli, [str(sp), str(nf), str(sw), "--out", str(out.parent)]) == 0
    rows = json.loads(out.read_text())["points"]
    assert len(rows) == 8 and png.stat().st_size > 0
    layers = get_network(TINY, (12, 12, 1)).layers
    e = evaluate(layers, 16, 16, 0.0)
    sram_rows = {r["operating_point"].get("voltage", r["operating_point"]["ber"]): r for r in rows
                 if r["family"] == "sram"}
    # NeuralFuse at V = 0.9: total - SRAM * (1 - 0.81)
    r = sram_rows[0.9]
    sram = float(np.asarray(P.sram_energy(e, 1.0)).sum())
    assert r["energy"] == pytest.approx(float(e.total) - sram * 0.19, rel=1e-5)
    assert r["relative_energy"] == pytest.approx(r["energy"] / float(e.total), rel=1e-9)
    assert sram_rows[0.01]["voltage"] == pytest.approx(math.sqrt(0.76), rel=1e-4)
    # the 0.9 V point (0.70) is dominated by 0.8 V (0.75, cheaper); the 1 % BER point is cheapest
    assert not r["pareto"] and sram_rows[0.8]["pareto"]
    # SWIM: relative cycles ((1 - f) + 10 f) / 10; mask 0.2 (0.7) is dominated by mask 0.1 (0.8)
    s = {r["operating_point"]["mask_p"]: r for r in rows if r["family"] == "verify"}
    assert s[0.1]["relative_energy"] == pytest.approx(0.19) and s[0.2]["pareto"] is False and s[0.1]["pareto"]
    # an explicit interval: base + the refresh of 16-bit words every second
    d = next(r for r in rows if r["family"] == "dram" and "refresh_interval_s" in r["operating_point"])
    nw = np.array([l.num_weights for l in layers], float)
    want = float(e.total) + float(P.dram_refresh_energy(float(P.weight_storage_bits(nw, 16, 0, 16)), 1.0))
    assert d["scheme"] == "none" and d["energy"] == pytest.approx(want, rel=1e-5)


def test_tradeoff_bad_inputs(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"method": "swim", "points": [{"accuracy_mean": 0.5}]}))  # no operating point
    assert run(tradeoff_cli, [str(bad), "--network", TINY, "--input", "12,12,1"]) == 2
    assert run(tradeoff_cli, [str(tmp_path / "missing.json")]) == 2
    bad.write_text(json.dumps({"method": "swim", "points": [{"mask_p": 2.0, "accuracy_mean": 0.5}]}))
    assert run(tradeoff_cli, [str(bad), "--network", TINY, "--input", "12,12,1"]) == 2


def test_tradeoff_reads_rows_of_eval_sparrow_and_eval_swim(tmp_path):
    # the rows eval.sparrow --sweep and eval.swim write
    sp = _report(tmp_path, "sweep.json", [
        _row("hbm", "ber", ber, acc, fault={"scheme": s}, stored_bits_per_weight=b, summary={"std": 0.01})
        for (s, b, acc) in (("sparrow", 19, 0.88), ("secded", 18, 0.85), ("none", 16, 0.3)) for ber in (1e-5, 1e-3)],
        checkpoint="x")
    sw = _report(tmp_path, "swim.json", [
        _row("cim", "dev_var", 0.1, 0.4, selection="none", mask_p=0.0, summary={"std": 0.1}),
        _row("cim", "dev_var", 0.1, 0.89, selection="all", mask_p=1.0, summary={"std": 0.0}),
        _row("cim", "dev_var", 0.1, 0.85, selection="SM", mask_p=0.05, summary={"std": 0.02})],
        model="lenet", dataset="fashion_mnist")
    out = tmp_path / "t" / "tradeoff.json"
    assert run(tradeoff_cli, [str(sp), str(sw), "--network", TINY, "--input", "12,12,1", "--out", str(out.parent)]) == 0
    rows = json.loads(out.read_text())["points"]
    dram = [r for r in rows if r["family"] == "dram"]
    assert len(dram) == 6 and {r["label"] for r in dram} == {"sparrow", "secded", "none"}
    assert all(r["accuracy_std"] == 0.01 for r in dram)
    # sparrow's B=16 layout stores 19 bits: more DRAM read energy than SEC-DED's 18 at the same BER
    e = {(r["label"], r["operating_point"]["ber"]): r["energy"] for r in dram}
    assert e[("sparrow", 1e-5)] > e[("secded", 1e-5)] > e[("none", 1e-5)]
    assert e[("none", 1e-3)] < e[("none", 1e-5)]  # a higher tolerated BER -> longer refresh interval
    verify = sorted((r for r in rows if r["family"] == "verify"), key=lambda r: r["relative_energy"])
    assert [r["label"] for r in verify] == ["swim none", "swim SM", "swim all"]
    assert {r["method"] for r in verify} == {"swim"}
    assert [r["accuracy_mean"] for r in verify] == [0.4, 0.85, 0.89] and verify[1]["accuracy_std"] == 0.02
    assert verify[0]["relative_energy"] == pytest.approx(0.1) and verify[2]["relative_energy"] == pytest.approx(1.0)


def test_energy_cli_user_tables(tmp_path):
    vt, rt, out = tmp_path / "v.json", tmp_path / "r.json", tmp_path / "o" / "energy.json"
    vt.write_text(json.dumps([[0.7, 1e-2], [0.9, 1e-4]]))  # log-linear: BER 1e-3 at 0.8
    rt.write_text(json.dumps({"table": [[0.1, 1e-8], [1.0, 1e-4]]}))  # log-log: 0.316 s -> 1e-6
    argv = ["--network", TINY, "--input", "12,12,1", "--ber", "1e-3", "--voltage-table", str(vt), "--v-nominal", "1.0",
            "--refresh-interval", "0.31622777", "--retention-table", str(rt), "--out", str(out.parent)]
    assert run(energy_cli, argv) == 0
    prot = json.loads(out.read_text())["protection"]
    assert prot["sram_voltage"]["points"][0]["voltage"] == pytest.approx(0.8, rel=1e-4)
    assert prot["dram_refresh"]["points"][0]["retention_ber"] == pytest.approx(1e-6, rel=1e-3)
    vt.write_text(json.dumps([[0.7, 1e-2], [0.9, 1e-1]]))  # BER rising with voltage: rejected
    assert run(energy_cli, argv) == 2
    vt.write_text("not json")
    assert run(energy_cli, argv) == 2
