"""A scheme registered in one outside module runs through the CLI, a campaign and the energy
report without edits elsewhere (docs/extending.md)."""
import json

import jax
import numpy as np
import pytest

import toy_tmr_scheme  # noqa: F401  (registers "tmr")
from jaxfault.cli import run_main


def run(main, argv):
    with pytest.raises(SystemExit) as e:
        run_main(main, argv)
    return e.value.code


def test_toy_scheme_corrects_every_single_exponent_error():
    """Exhaustive: every bf16 exponent value x every one of the 24 exponent-copy cells flipped."""
    w = (np.arange(256, dtype=np.uint32) << 23) | np.uint32(0x80550000)
    enc = np.asarray(toy_tmr_scheme.encode(jax.numpy.asarray(w)))
    for bit in list(range(23, 31)) + list(range(0, 16)):
        bad = enc ^ np.uint32(1 << bit)
        np.testing.assert_array_equal(np.asarray(toy_tmr_scheme.decode(jax.numpy.asarray(bad))), w, err_msg=str(bit))


def test_toy_scheme_through_cli_campaign_and_energy(lenet_checkpoint, tmp_path, capsys):
    from eval import campaign as campaign_cli
    from eval import sparrow as sparrow_cli
    from eval import tradeoff as tradeoff_cli

    out = tmp_path / "sp"
    assert run(sparrow_cli.main, ["--ber", "1e-2", "--scheme", "tmr", "--trials", "2", "--limit", "200",
                                  "--checkpoint", str(lenet_checkpoint), "--out", str(out)]) == 0
    result = next(out.glob("tmr_*.json"))
    r = json.loads(result.read_text())
    assert r["scheme"] == "tmr" and r["stored_bits_per_weight"] == 32
    assert 0.005 < r["realised_ber"]["mean"] < 0.02

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"checkpoint": str(lenet_checkpoint), "eval_examples": 200, "trials": 2,
                               "out": str(tmp_path / "c"),
                               "grid": [{"method": "sparrow", "scheme": ["tmr", "none"], "ber": [1e-3, 1e-2]}]}))
    assert run(campaign_cli.main, [str(cfg)]) == 0
    rows = [json.loads(l) for l in (tmp_path / "c" / "results.jsonl").read_text().splitlines() if l.strip()]
    rows = [r for r in rows if "config" in r]
    assert sorted((r["config"]["scheme"], r["config"]["ber"]) for r in rows) == \
        [("none", 1e-3), ("none", 1e-2), ("tmr", 1e-3), ("tmr", 1e-2)]
    tmr_hi = next(r for r in rows if r["config"] == {"method": "sparrow", "scheme": "tmr", "ber": 1e-2})
    none_hi = next(r for r in rows if r["config"] == {"method": "sparrow", "scheme": "none", "ber": 1e-2})
    assert tmr_hi["accuracy_mean"] >= none_hi["accuracy_mean"] - 0.02   # exponent protected

    capsys.readouterr()
    assert run(tradeoff_cli.main, [str(result), "--out", str(tmp_path / "t")]) == 0
    text = capsys.readouterr().out
    assert "tmr" in text

    # a plan's HBM stage takes it as one of its schemes; the energy report stores 32 bits a weight
    from eval import plan as plan_cli

    plan = {"checkpoint": str(lenet_checkpoint), "eval_examples": 100, "trials": 2, "out": str(tmp_path / "plan"),
            "hbm": {"scheme": ["tmr", "none"], "refresh_interval_s": [0.064, 4.0], "extrapolate": True}}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert run(plan_cli.main, [str(tmp_path / "plan.json")]) in (0, 2)
    confs = {(c["knobs"]["scheme"], c["knobs"]["refresh_interval_s"]): c
             for c in json.loads((tmp_path / "plan" / "plan.json").read_text())["configurations"]}
    assert confs[("tmr", 4.0)]["energy"]["stored_bits_per_weight"] == 32
    assert confs[("tmr", 4.0)]["rates"] == confs[("none", 4.0)]["rates"] and \
        confs[("tmr", 4.0)]["rates"][0] > confs[("tmr", 0.064)]["rates"][0]
    assert confs[("tmr", 4.0)]["energy"]["dram_weight_reads"] > confs[("none", 4.0)]["energy"]["dram_weight_reads"]


def test_toy_activation_fault_through_the_run_cli_and_a_campaign(lenet_checkpoint, tmp_path, capsys):
    """A fault model on the activation site, registered in tests/toy_dead_units.py only, runs
    through eval.run and a campaign; its faults follow the rate (Dense outputs of 100 images:
    LeNet's Dense layers have 120 + 84 + 10 = 214 outputs, so 21400 units per trial)."""
    import toy_dead_units  # noqa: F401  (registers "toy-dead-units")
    from eval import campaign as campaign_cli
    from eval import run as run_cli

    out = tmp_path / "run"
    assert run(run_cli.main, ["--fault-model", "toy-dead-units", "--rates", "0,0.05", "--trials", "3",
                              "--limit", "100", "--checkpoint", str(lenet_checkpoint), "--out", str(out),
                              "--no-compile-cache"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["p_dead"] for r in rows] == [0.0, 0.05] and rows[0]["activation_faults"]["max"] == 0
    assert abs(rows[1]["activation_faults"]["mean"] - 0.05 * 21400) < 5 * np.sqrt(21400 * 0.05 * 0.95 / 3)

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"checkpoint": str(lenet_checkpoint), "eval_examples": 100, "trials": 2,
                               "out": str(tmp_path / "c"),
                               "grid": [{"method": "toy-dead-units", "p_dead": [0.0, 0.3]}]}))
    assert run(campaign_cli.main, [str(cfg), "--no-compile-cache"]) == 0
    recs = [json.loads(line) for line in (tmp_path / "c" / "results.jsonl").read_text().splitlines() if line.strip()]
    recs = {r["config"]["p_dead"]: r for r in recs if "config" in r}
    assert recs[0.3]["accuracy_mean"] < recs[0.0]["accuracy_mean"]

    # its plan stage: the MAC array's supply sets the rate; the datapath's energy falls as V^2. No
    # trial may reuse a score by its weights (activation faults leave the weights clean).
    from eval import plan as plan_cli
    from eval import tradeoff as tradeoff_cli

    plan = {"checkpoint": str(lenet_checkpoint), "eval_examples": 100, "trials": 3, "out": str(tmp_path / "plan"),
            "target": {"metric": "mean", "max_drop_points": 3.0},
            "toy_mac": {"mac_voltage": [1.0, 0.85, 0.75], "p_dead_nominal": 1e-4}}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert run(plan_cli.main, [str(tmp_path / "plan.json")]) in (0, 2)
    report = json.loads((tmp_path / "plan" / "plan.json").read_text())
    confs = {c["knobs"]["mac_voltage"]: c for c in report["configurations"]}
    assert confs[1.0]["nominal"] and [confs[v]["rates"][0] for v in (1.0, 0.85, 0.75)] == \
        [pytest.approx(1e-4), pytest.approx(1e-1), pytest.approx(0.5)]
    assert all(c["forward_passes"] == 3 for c in confs.values())
    assert confs[0.75]["score"]["mean"] < confs[1.0]["score"]["mean"]        # half the Dense outputs dead
    net = confs[1.0]["energy"]["network"]
    assert confs[0.85]["energy"]["mac_datapath_saving"] == pytest.approx(-0.3 * (1 - 0.85 ** 2) * net)
    assert confs[0.75]["relative_energy"] < confs[0.85]["relative_energy"] < 1.0
    # the energy of protection has no model for an activation fault: its rows are skipped, said so
    capsys.readouterr()
    assert run(tradeoff_cli.main, [str(out / "results.json"), str(tmp_path / "c" / "results.jsonl")]) == 2
    assert "no row of these files has an energy model: 4 row(s) of toy-dead-units" in capsys.readouterr().err


def test_toy_weight_fault_with_a_knob_relation_through_run_campaign_and_plan(lenet_checkpoint, tmp_path, capsys):
    """A stored-weight fault model and its plan stage (a temperature knob that sets its rate, and
    the cooling energy it costs), registered in tests/toy_hot_sign_flips.py only, run through
    eval.run, a campaign and eval.plan with its energy report. LeNet's kernels hold 61,470 weights
    (conv 150 + 2,400, dense 48,000 + 10,080 + 840), so a trial's realised rate is a mean of
    61,470 Bernoulli draws: within 5 binomial standard deviations of the rate."""
    import toy_hot_sign_flips as toy
    from eval import campaign as campaign_cli
    from eval import plan as plan_cli
    from eval import run as run_cli

    out = tmp_path / "run"
    assert run(run_cli.main, ["--fault-model", "toy-sign-flips", "--rates", "0,0.01", "--trials", "3",
                              "--limit", "100", "--checkpoint", str(lenet_checkpoint), "--out", str(out),
                              "--no-compile-cache"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    n = 61470
    assert [r["p_sign"] for r in rows] == [0.0, 0.01] and rows[0]["faults"]["max"] == 0
    assert abs(rows[1]["realised_ber"]["mean"] - 0.01) < 5 * np.sqrt(0.01 * 0.99 / (3 * n))

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"checkpoint": str(lenet_checkpoint), "eval_examples": 100, "trials": 2,
                               "out": str(tmp_path / "c"),
                               "grid": [{"method": "toy-sign-flips", "p_sign": [0.0, 0.2]}]}))
    assert run(campaign_cli.main, [str(cfg), "--no-compile-cache"]) == 0
    recs = [json.loads(line) for line in (tmp_path / "c" / "results.jsonl").read_text().splitlines() if line.strip()]
    recs = {r["config"]["p_sign"]: r for r in recs if "config" in r}
    assert recs[0.2]["accuracy_mean"] < recs[0.0]["accuracy_mean"]

    # the plan: temperature is the knob; 85 C (uncooled) is the nominal design
    plan = {"checkpoint": str(lenet_checkpoint), "eval_examples": 200, "trials": 4, "out": str(tmp_path / "plan"),
            "target": {"metric": "mean", "max_drop_points": 2.0},
            "toy_thermal": {"temperature_c": [85, 65, 25], "p_sign_at_25c": 1e-4}}
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    capsys.readouterr()
    assert run(plan_cli.main, [str(plan_file)]) in (0, 2)      # 2: the target unreachable, reported
    text = capsys.readouterr()
    print(text.out, text.err)
    assert "65 C" in text.out + text.err
    report = json.loads((tmp_path / "plan" / "plan.json").read_text())
    confs = {c["knobs"]["temperature_c"]: c for c in report["configurations"]}
    assert sorted(confs) == [25.0, 65.0, 85.0] and confs[85.0]["nominal"]
    section = {"p_sign_at_25c": 1e-4, "doubling_c": 10.0}
    for t, c in confs.items():     # the knob relation, and the rate each trial realised
        assert c["rates"] == [pytest.approx(toy.thermal_rate({"temperature_c": t}, section))]
        assert abs(c["realised_rates"]["toy_thermal"] - c["rates"][0]) < 5 * np.sqrt(c["rates"][0] / (4 * n))
    net = confs[85.0]["energy"]["network"]       # the cooling term: 0.002 of the network's energy per degree
    assert [confs[t]["energy"]["cooling"] for t in (85.0, 65.0, 25.0)] == \
        [0.0, pytest.approx(0.002 * 20 * net), pytest.approx(0.002 * 60 * net)]
    assert confs[25.0]["relative_energy"] > confs[65.0]["relative_energy"] > confs[85.0]["relative_energy"] == 1.0
    assert confs[25.0]["score"]["mean"] >= confs[85.0]["score"]["mean"]   # p_sign 1e-4 against 6.4e-3


def test_toy_method_preset_through_run_campaign_and_plan(lenet_checkpoint, tmp_path, capsys):
    """A preset registered in tests/toy_hbm_flips_preset.py only (the HBM fault model with XOR
    flips): eval.run gives the same rows as the HBM fault model with that field set (same keys,
    same numbers), a campaign runs it by name and refuses the field it fixes, and a plan's HBM
    stage takes it as its fault model, priced by the energy report."""
    import toy_hbm_flips_preset  # noqa: F401  (registers "toy-hbm-flips")
    from eval import campaign as campaign_cli
    from eval import plan as plan_cli
    from eval import run as run_cli

    common = ["--rates", "0,0.01", "--trials", "3", "--limit", "100", "--checkpoint", str(lenet_checkpoint),
              "--no-compile-cache"]
    assert run(run_cli.main, ["--fault-model", "toy-hbm-flips", "--set", "scheme=none", "--out",
                              str(tmp_path / "preset"), *common]) == 0
    assert run(run_cli.main, ["--fault-model", "hbm", "--set", "scheme=none", "--set", "mode=flip", "--out",
                              str(tmp_path / "base"), *common]) == 0
    preset, base = ([{k: v for k, v in r.items() if k != "method"}
                     for r in json.loads((tmp_path / d / "results.json").read_text())["rows"]] for d in ("preset", "base"))
    assert preset == base and preset[1]["realised_ber"]["mean"] > 0.005 and preset[1]["fault_model"] == "hbm"
    from eval import tradeoff as tradeoff_cli           # its rows priced as the HBM fault model's

    capsys.readouterr()
    assert run(tradeoff_cli.main, [str(tmp_path / "preset" / "results.json"), "--out", str(tmp_path / "t")]) == 0
    points = json.loads((tmp_path / "t" / "tradeoff.json").read_text())["points"]
    assert [(p["family"], p["label"], p["operating_point"]["ber"]) for p in points] == \
        [("dram", "none", 0.0), ("dram", "none", 0.01)]
    capsys.readouterr()
    assert run(run_cli.main, ["--fault-model", "toy-hbm-flips", "--set", "mode=stuck-at", "--out",
                              str(tmp_path / "bad"), *common]) == 2
    assert "is a preset with mode = 'flip'" in capsys.readouterr().err

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"checkpoint": str(lenet_checkpoint), "eval_examples": 100, "trials": 2,
                               "out": str(tmp_path / "c"),
                               "grid": [{"method": "toy-hbm-flips", "scheme": ["none", "sparrow"], "ber": [0.01]}]}))
    assert run(campaign_cli.main, [str(cfg), "--no-compile-cache"]) == 0
    recs = [json.loads(line) for line in (tmp_path / "c" / "results.jsonl").read_text().splitlines() if line.strip()]
    recs = {r["config"]["scheme"]: r for r in recs if "config" in r}
    assert recs["sparrow"]["accuracy_mean"] > recs["none"]["accuracy_mean"]   # Sparrow corrects exponent flips
    cfg.write_text(json.dumps({"checkpoint": str(lenet_checkpoint), "out": str(tmp_path / "d"),
                               "grid": [{"method": "toy-hbm-flips", "mode": "stuck-at", "ber": [0.01]}]}))
    capsys.readouterr()
    assert run(campaign_cli.main, [str(cfg)]) == 2
    assert "is a preset with mode = 'flip'" in capsys.readouterr().err

    plan = {"checkpoint": str(lenet_checkpoint), "eval_examples": 200, "trials": 4, "out": str(tmp_path / "plan"),
            "target": {"metric": "mean", "max_drop_points": 2.0},
            "hbm": {"fault_model": "toy-hbm-flips", "scheme": ["none", "sparrow"], "refresh_interval_s": [0.064, 2.0],
                    "extrapolate": True}}
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    assert run(plan_cli.main, [str(plan_file)]) in (0, 2)
    report = json.loads((tmp_path / "plan" / "plan.json").read_text())
    confs = {(c["knobs"]["scheme"], c["knobs"]["refresh_interval_s"]): c for c in report["configurations"]}
    assert confs[("sparrow", 2.0)]["energy"]["stored_bits_per_weight"] > confs[("none", 2.0)]["energy"]["stored_bits_per_weight"]
    assert confs[("sparrow", 2.0)]["score"]["mean"] > confs[("none", 2.0)]["score"]["mean"]
    bad = {**plan, "hbm": {**plan["hbm"], "fault_model": "sram"}}
    plan_file.write_text(json.dumps(bad))
    capsys.readouterr()
    assert run(plan_cli.main, [str(plan_file)]) == 2
    assert "fault_model 'sram' is not 'hbm' or a preset of it" in capsys.readouterr().err
