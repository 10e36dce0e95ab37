"""Protection planner: knob tables, strict plan validation, consistency with the engine,
composition of stages, independent stage keys, energy terms, unreachable targets, resume."""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfault import engine
from jaxfault.core import tasks
from jaxfault.energy import protection as P
from jaxfault.core.errors import JaxfaultError
from jaxfault.faults.fault_models import BitFlips, compose
from jaxfault.plan import expand, knobs, load_plan, run_plan, validate_plan
from jaxfault.faults.fault_models import InDtype
from jaxfault.plan.planner import load_plan_data, plan_trial_keys, stage_fault_model
from jaxfault.core.precision import precision_scope

N_IMAGES = 200
TRIALS = 4


# ------------------------------------------------------------------------------ knob tables
def test_knob_rates_follow_the_documented_tables_inside_their_range():
    rt, vt = knobs.retention_table(), knobs.voltage_table()
    for t, b in P.RETENTION_BER_TABLE:
        assert knobs.retention_ber(t, rt) == pytest.approx(b, rel=1e-5)
    for v, b in P.VOLTAGE_BER_TABLE:
        assert knobs.voltage_ber(v, vt) == pytest.approx(b, rel=1e-5)
    for t in (0.1, 0.7, 3.0):
        assert knobs.retention_ber(t, rt) == pytest.approx(float(P.retention_ber(t)), rel=1e-6)
    for v in (0.85, 0.93, 0.99):
        assert knobs.voltage_ber(v, vt) == pytest.approx(float(P.voltage_ber(v)), rel=1e-6)


def test_extrapolation_extends_the_end_segments_and_caps_the_ber():
    rt, vt = knobs.retention_table(), knobs.voltage_table()
    # below the retention table: the first log-log segment continued
    (t0, b0), (t1, b1) = rt[0], rt[1]
    slope = np.log(b1 / b0) / np.log(t1 / t0)
    t = 0.032
    assert knobs.retention_ber(t, rt) == pytest.approx(b0 * (t / t0) ** slope, rel=1e-9)
    assert knobs.retention_ber(100.0, rt) == knobs.MAX_BER
    # above the voltage table: the last log-linear segment continued (BER falls with voltage)
    (v0, c0), (v1, c1) = vt[-2], vt[-1]
    v = 1.05
    assert knobs.voltage_ber(v, vt) == pytest.approx(c0 * (c1 / c0) ** ((v - v0) / (v1 - v0)), rel=1e-9)
    assert knobs.voltage_ber(0.5, vt) == knobs.MAX_BER


def _plan(**over):
    base = {"hbm": {"scheme": ["none"], "refresh_interval_s": [0.064, 1.024]}}
    base.update(over)
    return base


@pytest.mark.parametrize("section,bad,pattern", [
    ("hbm", {"refresh_interval_s": [10.0]}, r"refresh_interval_s 10 is outside the retention table's range \[0.064, 8.192\]"),
    ("hbm", {"refresh_interval_s": [0.01]}, "outside the retention table's range"),
    ("sram", {"voltage": [0.8]}, r"voltage 0.8 is outside the voltage table's range \[0.84, 1\]"),
    ("sram", {"voltage": [1.1]}, "extrapolate"),
])
def test_out_of_range_knobs_are_refused_unless_extrapolation_is_allowed(section, bad, pattern):
    with pytest.raises(JaxfaultError, match=pattern):
        validate_plan({section: bad})
    plan = validate_plan({section: {**bad, "extrapolate": True}})
    cfgs = expand(plan, (section,))
    assert all(0 < c.rates[0] <= knobs.MAX_BER for c in cfgs)


def test_custom_tables_are_validated():
    with pytest.raises(JaxfaultError, match="strictly monotone"):
        validate_plan({"hbm": {"refresh_interval_s": [0.1], "retention_table": [[0.064, 1e-3], [0.128, 1e-4]]}})
    with pytest.raises(JaxfaultError, match="retention_table"):
        validate_plan({"hbm": {"refresh_interval_s": [0.1], "retention_table": [[0.064, "x"]]}})
    plan = validate_plan({"hbm": {"refresh_interval_s": [0.1], "retention_table": [[0.05, 1e-9], [0.2, 1e-6]]}})
    assert expand(plan, ("hbm",))[0].rates[0] == pytest.approx(1e-9 * 1000 ** (np.log(2) / np.log(4)), rel=1e-5)


# ------------------------------------------------------------------------------ bad plans
@pytest.mark.parametrize("plan,pattern", [
    (_plan(hbm={"refresh_interval": [0.1]}), r"plan: hbm: unknown field 'refresh_interval' \(did you mean 'refresh_interval_s'\?\)"),
    ({"sram": {"voltag": [1.0]}}, r"did you mean 'voltage'"),
    (_plan(trails=3), r"plan: unknown field 'trails' \(did you mean 'trials'\?\)"),
    (_plan(trials="20"), "plan: trials must be an integer"),
    (_plan(trials=0), "plan: trials must be >= 1"),
    (_plan(hbm={"scheme": ["sparow"], "refresh_interval_s": [0.1]}), r"unknown ECC scheme 'sparow' \(did you mean 'sparrow'\?\)"),
    (_plan(hbm={"refresh_interval_s": ["fast"]}), r"refresh_interval_s\[0\] must be a number"),
    (_plan(hbm={"refresh_interval_s": [0.1, 0.1]}), "listed twice"),
    (_plan(hbm={"refresh_interval_s": []}), "must not be empty"),
    (_plan(hbm={"refresh_interval_s": [0.1], "extrapolate": "yes"}), "extrapolate must be true or false"),
    ({"sram": {"voltage": [1.0], "generator": ["/nonexistent/gen"]}}, "not a checkpoint folder"),
    ({"sram": {"voltage": [1.0], "bits": 7}}, "bits must be one of 4, 8, 16"),
    ({"cim": {"write_verify": [1.5]}}, r"write_verify\[0\] must be >= 0 and <= 1, got 1.5"),
    ({"cim": {"write_verify": [0.1], "selection": "magnitud"}}, r"did you mean 'magnitude'"),
    ({}, "no stage to plan"),
    (_plan(target={"metric": "p10"}), "metric must be one of mean, p5"),
    (_plan(target={"max_drop_points": 1, "min_accuracy": 0.8}), "either max_drop_points or min_accuracy"),
    (_plan(eval_dtype="float16"), "eval_dtype must be one of"),
    (_plan(energy={"qw": 16, "refresh_pj": 1}), r"plan: energy: unknown field 'refresh_pj'"),
    (_plan(inference_period_s=0), "inference_period_s must be > 0"),
    ([1, 2], "plan must be a JSON object"),
])
def test_bad_plans_give_one_line_errors(plan, pattern):
    with pytest.raises(JaxfaultError, match=pattern) as e:
        validate_plan(plan)
    assert "\n" not in str(e.value)


def test_cli_bad_plan_exits_2_with_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    from eval import plan as cli
    from jaxfault.cli import run_main

    monkeypatch.setattr(sys.modules["jaxfault.plan.planner"], "load_plan_data",
                        lambda *a, **k: pytest.fail("work started on a bad plan"))
    f = tmp_path / "bad.json"
    for text, pattern in ((json.dumps({"hbm": {"refresh_interval_s": [20.0]}}), "outside the retention table"),
                          ("{not json", "not valid JSON"),
                          (json.dumps({"hbm": {"refresh_interval_s": [0.1]}, "out": 3}), "out must be a string"),
                          (json.dumps({"hbm": {"refresh_interval_s": [0.1]}, "output": "x"}), 'the field "output" is now "out"')):
        f.write_text(text)
        with pytest.raises(SystemExit) as e:
            run_main(cli.main, [str(f), "--out", str(tmp_path / "out")] if '"out' not in text else [str(f)])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and pattern in err, err
        assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as e:
        run_main(cli.main, [str(tmp_path / "missing.json")])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------------ evaluation
def _validated(checkpoint, **over):
    plan = {"checkpoint": str(checkpoint), "eval_examples": N_IMAGES, "trials": TRIALS, "configs_per_call": 3,
            "batch_size": 100}
    plan.update(over)
    return validate_plan(plan)


@pytest.fixture(scope="module")
def two_stage(lenet_checkpoint):
    """A 2-stage plan (HBM without ECC, SRAM) evaluated once: plan, data, report."""
    plan = _validated(lenet_checkpoint, eval_dtype="float32",
                      hbm={"scheme": ["none"], "refresh_interval_s": [0.064, 1.024, 2.896]},
                      sram={"voltage": [1.0, 0.92]})
    data = load_plan_data(plan, log=lambda s: None)
    report = run_plan(plan, data=data, log=lambda s: None)
    return plan, data, report


def test_single_stage_plan_equals_the_engine_with_the_same_keys(lenet_checkpoint):
    """One active stage: the plan's accuracies are engine.evaluate's for the plan's trial keys,
    both for compose(stage) and for the stage alone with the composition's stage-0 keys."""
    plan = _validated(lenet_checkpoint, sram={"voltage": [1.0, 0.93, 0.9]})
    data = load_plan_data(plan, log=lambda s: None)
    report = run_plan(plan, data=data, log=lambda s: None)
    cfgs = report["configurations"]
    rates = [c["rates"] for c in cfgs]
    keys = plan_trial_keys(plan["seed"], plan["trials"])
    fm = stage_fault_model("sram", plan)
    ref = engine.evaluate(data.model, data.variables, data.images, data.labels, compose(fm), rates, keys,
                          strategy="loop", batch_size=100)
    stage0 = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    alone = engine.evaluate(data.model, data.variables, data.images, data.labels, fm, [r[0] for r in rates], stage0,
                            strategy="loop", batch_size=100)
    np.testing.assert_allclose([c["score"]["mean"] for c in cfgs], ref.accuracy.mean(axis=1), atol=1e-6)
    np.testing.assert_array_equal(ref.accuracy, alone.accuracy)
    assert report["compiled_programs"] == 1
    from jaxfault.plan.planner import evaluate_configurations

    rows, _ = evaluate_configurations(plan, data, expand(plan, ("sram",)), log=lambda s: None)
    np.testing.assert_allclose(np.array([r["score"] for r in rows]), ref.accuracy, atol=1e-6)
    assert ref.accuracy.min() < ref.accuracy.max()   # faults changed something: the comparison is not vacuous


def test_fingerprints_separate_weights_that_differ_in_one_value():
    from jaxfault.plan.planner import fingerprint_multipliers, params_fingerprint

    rng = np.random.default_rng(0)
    for dtype in (jnp.float32, jnp.bfloat16):
        params = {"a": {"kernel": jnp.asarray(rng.standard_normal((30, 20)), dtype)},
                  "b": {"bias": jnp.asarray(rng.standard_normal(7), dtype)}}
        mult = fingerprint_multipliers(params)
        assert all(bool(jnp.all(m & 1)) for pair in mult for m in pair)
        fp = jax.jit(params_fingerprint)
        ref = np.asarray(fp(params, mult))
        np.testing.assert_array_equal(np.asarray(fp(jax.tree_util.tree_map(jnp.copy, params), mult)), ref)
        nbits = 32 if dtype == jnp.float32 else 16
        ui = jnp.uint32 if dtype == jnp.float32 else jnp.uint16
        seen = {tuple(ref)}
        for leaf, idx in (("a", (0, 0)), ("a", (29, 19)), ("b", (3,))):
            for bit in (0, nbits - 1, nbits // 2):
                tree = jax.tree_util.tree_map(jnp.copy, params)
                name = "kernel" if leaf == "a" else "bias"
                x = tree[leaf][name]
                u = jax.lax.bitcast_convert_type(x, ui)
                u = u.at[idx].set(u[idx] ^ ui(1 << bit))
                tree[leaf][name] = jax.lax.bitcast_convert_type(u, dtype)
                got = tuple(np.asarray(fp(tree, mult)))
                assert got not in seen
                seen.add(got)


@pytest.mark.slow
def test_reusing_evaluated_weights_changes_no_number(two_stage):
    """Trials whose weights were evaluated before (the fault-free ones included) reuse that
    accuracy: identical per-trial results with reuse off, and fewer forward passes with it on."""
    from jaxfault.plan.planner import evaluate_configurations

    plan, data, _ = two_stage
    cfgs = expand(plan, ("hbm", "sram"))
    on, _ = evaluate_configurations(plan, data, cfgs, log=lambda s: None)
    off, _ = evaluate_configurations({**plan, "skip_fault_free": False}, data, cfgs, log=lambda s: None)
    np.testing.assert_array_equal(np.array([r["score"] for r in on]), np.array([r["score"] for r in off]))
    assert sum(r["forward_passes"] for r in off) == len(cfgs) * TRIALS
    nominal = [r for r, c in zip(on, cfgs) if c.knobs["refresh_interval_s"] == 0.064 and c.knobs["voltage"] == 1.0][0]
    assert nominal["forward_passes"] < TRIALS          # ~0.03 expected SRAM faults per trial on 200 images' model
    assert sum(r["forward_passes"] for r in on) < len(cfgs) * TRIALS


def test_two_stages_together_equal_the_stages_one_after_the_other(two_stage):
    """compose(hbm, sram) at rates (r1, r2) = sram(fold_in(k, 1)) after hbm(fold_in(k, 0)), bit for
    bit, and the plan's accuracies are those of the sequentially perturbed weights."""
    plan, data, report = two_stage
    hbm, sram = stage_fault_model("hbm", plan, "none"), stage_fault_model("sram", plan)
    fm = compose(hbm, sram).with_rate_bound([1e-3, 1e-2])
    # prepared as the plan prepares it (plan_fault_model: the composition in the plan's eval dtype)
    eval_model, prepared, x = engine.prepare(data.model, data.variables, data.images, InDtype(fm, plan["eval_dtype"]))
    metric = jax.jit(tasks.make_metric_fn(eval_model, batch_size=min(plan["batch_size"], N_IMAGES)))
    keys = plan_trial_keys(plan["seed"], plan["trials"])
    i = next(j for j, c in enumerate(report["configurations"])
             if c["knobs"]["refresh_interval_s"] == 1.024 and c["knobs"]["voltage"] == 0.92)
    r1, r2 = report["configurations"][i]["rates"]
    together = jax.jit(lambda k: fm.perturb(k, prepared, jnp.array([r1, r2], jnp.float32))[0])
    first = jax.jit(lambda k: hbm.with_rate_bound(1e-3).perturb(jax.random.fold_in(k, 0), prepared, r1)[0])
    second = jax.jit(lambda k, v: sram.with_rate_bound(1e-2).perturb(jax.random.fold_in(k, 1), v, r2)[0])
    accs = []
    for k in keys:
        a, b = together(k), second(k, first(k))
        for u, w in zip(jax.tree_util.tree_leaves(a["params"]), jax.tree_util.tree_leaves(b["params"])):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(w))
        with precision_scope(plan["precision"]):
            accs.append(float(metric(b, x, data.labels)["top1"]))
    from jaxfault.plan.planner import evaluate_configurations

    rows, _ = evaluate_configurations(plan, data, expand(plan, ("hbm", "sram")), log=lambda s: None)
    # the weights are bit-identical (above); the accuracies come from two differently compiled
    # programs (the plan's lax.map over rates and trials, a single call here), whose float32
    # rounding may differ: at most one image of N_IMAGES may change its argmax.
    np.testing.assert_allclose(rows[i]["score"], accs, atol=1.0 / N_IMAGES + 1e-6)
    assert min(accs) < report["clean_score"]   # the stages hit the weights at these rates


def test_stage_keys_are_independent():
    """Two identical bit-flip stages: the cells both stages flip number cells * p^2 on average, as
    for independent draws (identical keys would flip the same cells: overlap = n0); the per-trial
    fault counts of the two stages are uncorrelated."""
    p = 0.02
    w = {"params": {"Dense_0": {"kernel": jnp.linspace(-1, 1, 4096 * 8, dtype=jnp.float32).reshape(4096, 8)}}}
    fm = compose(BitFlips(rate_bound=p), BitFlips(rate_bound=p))
    cells = 4096 * 8 * 32

    def one(k):
        out, (s0, s1) = fm.perturb(k, w, jnp.array([p, p]))
        a = jax.lax.bitcast_convert_type(w["params"]["Dense_0"]["kernel"], jnp.uint32)
        b = jax.lax.bitcast_convert_type(out["params"]["Dense_0"]["kernel"], jnp.uint32)
        changed = jnp.sum(jax.lax.population_count(a ^ b))
        return s0.n_faults, s1.n_faults, changed

    n0, n1, changed = jax.device_get(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(7), 200)))
    overlap = (n0.astype(np.int64) + n1 - changed) / 2          # cells flipped twice are restored
    mean_overlap = overlap.mean()
    expected = cells * p * p
    # sd of one trial's overlap ~ sqrt(cells p^2); of the 200-trial mean / sqrt(200); 5 sd tolerance
    assert abs(mean_overlap - expected) < 5 * np.sqrt(expected / 200), (mean_overlap, expected)
    assert mean_overlap < 2 * p * n0.mean()     # identical stage keys would give overlap = n0
    r = np.corrcoef(n0, n1)[0, 1]
    assert abs(r) < 5 / np.sqrt(200), r


# ------------------------------------------------------------------------------ energy and report
def test_energy_terms_follow_the_protection_model(two_stage):
    plan, data, report = two_stage
    cfgs = report["configurations"]
    nom = cfgs[report["nominal"]]
    assert nom["knobs"] == {"scheme": "none", "refresh_interval_s": 0.064, "voltage": 1.0, "generator": None}
    assert nom["relative_energy"] == 1.0
    e = nom["energy"]
    assert e["stored_bits_per_weight"] == 16
    for c in cfgs:
        r = c["energy"]
        ratio = 0.064 / c["knobs"]["refresh_interval_s"]
        assert r["refresh"] == pytest.approx(e["refresh"] * ratio, rel=1e-5)
        assert r["dram_weight_reads"] == pytest.approx(e["dram_weight_reads"], rel=1e-6)
        assert r["total"] == pytest.approx(r["network"] + r["dram_weight_reads"] + r["refresh"], rel=1e-6)
        assert (r["network"] <= e["network"] + 1e-6) and (c["knobs"]["voltage"] < 1.0) == (r["network"] < e["network"])
    from jaxfault.plan.energy import build_energy_model

    model, variables = engine.evaluation_form(data.model, data.variables)
    em = build_energy_model(model, variables, data.input_shape, {**plan, "energy": {**plan["energy"], "ecc_read_scaling": 1.0}},
                            ("hbm", "sram"))
    sp = em.breakdown({"scheme": "sparrow", "refresh_interval_s": 0.064, "voltage": 1.0})
    nn = em.breakdown({"scheme": "none", "refresh_interval_s": 0.064, "voltage": 1.0})
    assert sp["stored_bits_per_weight"] == 18
    assert sp["refresh"] == pytest.approx(nn["refresh"] * 18 / 16, rel=1e-6)
    assert sp["dram_weight_reads"] == pytest.approx(nn["dram_weight_reads"] * 18 / 16, rel=1e-6)


def test_report_front_and_target(two_stage):
    plan, _, report = two_stage
    cfgs = report["configurations"]
    for m in ("mean", "p5"):
        front = [cfgs[i] for i in report["fronts"][m]]
        for f in front:   # nothing on the front is dominated
            assert not any(o["energy"]["total"] <= f["energy"]["total"] and o["score"][m] >= f["score"][m]
                           and (o["energy"]["total"] < f["energy"]["total"] or o["score"][m] > f["score"][m])
                           for o in cfgs)
    thr = report["target"]["threshold_score"]
    assert thr == pytest.approx(report["clean_score"] - 0.01)
    meeting = [c for c in cfgs if c["score"]["p5"] >= thr]
    assert report["reachable"] == bool(meeting)
    if meeting:
        assert cfgs[report["chosen"]]["energy"]["total"] == min(c["energy"]["total"] for c in meeting)
        assert cfgs[report["chosen"]]["pareto_p5"]


def test_unreachable_target_is_reported_with_the_best_configuration(two_stage, tmp_path, capsys, monkeypatch):
    """The CLI writes its outputs, then reports the unreachable target on one line with exit 2."""
    from eval import plan as cli
    from jaxfault.cli import run_main
    from jaxfault.plan import planner
    from jaxfault.plan.report import knob_text

    plan, data, _ = two_stage
    monkeypatch.setattr(planner, "load_plan_data", lambda *a, **k: data)
    f = tmp_path / "plan.json"
    body = {k: plan[k] for k in ("checkpoint", "eval_examples", "trials", "configs_per_call", "batch_size", "eval_dtype")}
    body.update(hbm={"scheme": ["none"], "refresh_interval_s": [0.064, 2.896]}, sram={"voltage": [1.0, 0.92]},
                target={"metric": "mean", "min_accuracy": 0.999}, out=str(tmp_path / "out"))
    f.write_text(json.dumps(body))
    with pytest.raises(SystemExit) as e:
        run_main(cli.main, [str(f)])
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: target unreachable")
    assert "unreachable: no configuration meets the target" in captured.out
    out = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert out["reachable"] is False and out["chosen"] is None
    # the best configuration: highest mean accuracy, ties broken by the lower energy
    cfgs = out["configurations"]
    best = max(range(len(cfgs)), key=lambda i: (cfgs[i]["score"]["mean"], -cfgs[i]["energy"]["total"]))
    assert out["best"] == best
    assert f"best configuration found: {knob_text(cfgs[best]['knobs'])}" in captured.err
    assert (tmp_path / "out" / "plan.png").stat().st_size > 0
    # resumed: the same command computes nothing new (rows come from results.jsonl)
    monkeypatch.setattr(planner.Planner, "run_chunk", lambda *a, **k: pytest.fail("row recomputed"))
    with pytest.raises(SystemExit):
        run_main(cli.main, [str(f), "--overwrite"])
    assert "resuming: 4 row(s)" in capsys.readouterr().out


@pytest.mark.slow
def test_cim_stage_uses_the_write_verify_mask_and_counts_programming_energy(lenet_checkpoint):
    """A CiM-only plan equals the engine's CiMVariation with the magnitude mask of each fraction
    as variables["write_verify"], for the plan's keys; full write-verify is the nominal design."""
    from jaxfault.swim import WRITE_VERIFY, full_mask, write_verify_mask

    plan = _validated(lenet_checkpoint, cim={"write_verify": [0.0, 0.3, 1.0], "dev_var": 0.3})
    data = load_plan_data(plan, log=lambda s: None)
    report = run_plan(plan, data=data, log=lambda s: None)
    cfgs = report["configurations"]
    assert [c["knobs"]["write_verify"] for c in cfgs] == [0.0, 0.3, 1.0]
    assert cfgs[report["nominal"]]["knobs"] == {"write_verify": 1.0}
    keys = plan_trial_keys(plan["seed"], plan["trials"])
    model, variables = engine.evaluation_form(data.model, data.variables)
    fm = compose(stage_fault_model("cim", plan))
    for c in cfgs:
        f = c["knobs"]["write_verify"]
        mask = (full_mask(variables["params"], f == 1.0) if f in (0.0, 1.0) else
                write_verify_mask(model, variables, data.images[:1], data.labels[:1], method="magnitude", mask_p=f))
        ref = engine.evaluate(model, {**variables, WRITE_VERIFY: mask}, data.images, data.labels, fm, [[0.3]], keys,
                              strategy="loop", batch_size=100)
        assert c["score"]["mean"] == pytest.approx(float(ref.accuracy.mean()), abs=1e-6)
        assert c["forward_passes"] == TRIALS           # CiM noise touches every weight: no reuse
    e = [c["energy"]["write_verify"] for c in cfgs]
    assert 0 < e[0] < e[1] < e[2]
    nw = sum(l.num_weights for l in __import__("jaxfault.energy.layers", fromlist=["x"]).layers_from_model(
        model, data.input_shape, variables))
    em_cycles = float(P.write_verify_cycles(nw, 1.0))
    assert e[2] == pytest.approx(em_cycles * 10.0 / P.PJ_PER_UNIT * plan["inference_period_s"] / 3600.0, rel=1e-5)
    assert cfgs[0]["score"]["mean"] < cfgs[2]["score"]["mean"]   # verifying helps at dev_var 0.3


@pytest.mark.slow
def test_generator_images_are_transformed_once_and_charged(qat_lenet_checkpoint, tmp_path):
    """An SRAM plan with a (tiny, briefly trained) NeuralFuse generator: the generator
    configuration's accuracies are the engine's on G(x) for the plan's keys, and its energy adds
    the generator network at the same voltage."""
    from jaxfault.cli import run_main
    from jaxfault.neuralfuse.eopm import to_base_range
    from jaxfault.neuralfuse.evaluate import apply_generator, load_generator
    from train.neuralfuse import main as train_main

    out = tmp_path / "nf"
    with pytest.raises(SystemExit) as e:
        run_main(train_main, ["--checkpoint", str(qat_lenet_checkpoint), "--generator", "UNetS", "--n-models", "2",
                              "--train-subset", "64", "--batch-size", "16", "--epochs", "1", "--eval-models", "0",
                              "--out", str(out)])
    assert e.value.code == 0
    gen_path = str(out / "generator")
    plan = _validated(qat_lenet_checkpoint, sram={"voltage": [1.0, 0.9], "generator": [None, gen_path]})
    data = load_plan_data(plan, log=lambda s: None)
    gen, gen_vars, _ = load_generator(gen_path)
    gx = to_base_range(apply_generator(gen, gen_vars, np.asarray(data.images)), "symmetric")
    np.testing.assert_array_equal(np.asarray(data.generator_images[gen_path]), np.asarray(gx))
    report = run_plan(plan, data=data, log=lambda s: None)
    keys = plan_trial_keys(plan["seed"], plan["trials"])
    fm = compose(stage_fault_model("sram", plan))
    for c in report["configurations"]:
        x = data.images if c["knobs"]["generator"] is None else gx
        ref = engine.evaluate(data.model, data.variables, x, data.labels, fm, [c["rates"]], keys, strategy="loop",
                              batch_size=100)
        assert c["score"]["mean"] == pytest.approx(float(ref.accuracy.mean()), abs=1e-6)
        assert (c["energy"]["generator"] > 0) == (c["knobs"]["generator"] is not None)


def test_every_configuration_carries_intervals_and_a_status(two_stage):
    """Without certify the choice stays on the point estimates; every configuration still gets its
    95 % intervals and a met / not met / undecided status from its Bonferroni-corrected interval."""
    from jaxfault.plan.report import target_status

    _, _, report = two_stage
    cert = report["certification"]
    k = len(report["configurations"])
    assert cert["comparisons"] == k and cert["looks"] == 1 and not cert["certify"]
    assert cert["per_configuration_level"] == pytest.approx(1 - 0.05 / k)
    assert sum(cert["counts"].values()) == k
    thr = report["target"]["threshold_score"]
    for e in report["configurations"]:
        a, c = e["score"], e["certification"]
        assert a["mean_ci"][0] <= a["mean"] <= a["mean_ci"][1] and a["n"] == TRIALS == c["trials"]
        assert a["p5_ci"][0] == 0.0           # 4 trials: no order statistic bounds the 5th percentile below
        assert c["status"] == target_status(c["bound"], c["upper"], thr) == "undecided"
        assert e["meets_target"] == (a["p5"] >= thr - 1e-9)


def test_certified_plan_adds_trials_to_undecided_configurations_and_resumes(two_stage, tmp_path, monkeypatch):
    from jaxfault.plan import planner
    from jaxfault.plan.report import target_interval, target_status

    plan0, data, _ = two_stage
    plan = _validated(plan0["checkpoint"], eval_dtype="float32",
                      hbm={"scheme": ["none"], "refresh_interval_s": [0.064, 1.024, 2.896]},
                      sram={"voltage": [1.0, 0.92]},
                      target={"metric": "mean", "min_accuracy": 0.35, "certify": True, "max_trials": 3 * TRIALS})
    results = tmp_path / "results.jsonl"
    report = run_plan(plan, data=data, log=lambda s: None, results_path=results)
    cert = report["certification"]
    assert cert["certify"] and cert["max_trials"] == 12 and cert["looks"] == 1    # the mean: anytime-valid bets
    cfgs = report["configurations"]
    assert any(e["score"]["n"] > TRIALS for e in cfgs), "no configuration got more trials"
    for e in cfgs:
        c, n = e["certification"], e["score"]["n"]
        assert n in (4, 8, 12) and c["trials"] == n == len(e["score"]["values"])
        # the bound is the corrected interval of this configuration's own trials
        assert [c["bound"], c["upper"]] == list(target_interval(e["score"]["values"], "mean", cert))
        assert c["status"] == target_status(c["bound"], c["upper"], 0.35)
        assert c["status"] != "undecided" or n == 12       # straddling: more trials up to the budget
        assert e["meets_target"] == (c["status"] == "met")
        if c["status"] == "met":
            assert c["bound"] >= 0.35 - 1e-9
    met = [e for e in cfgs if e["certification"]["status"] == "met"]
    assert report["reachable"] == bool(met)
    if met:
        assert cfgs[report["chosen"]]["energy"]["total"] == min(e["energy"]["total"] for e in met)
    # every configuration's chunks were recorded: the same plan resumes without computing anything
    monkeypatch.setattr(planner.Planner, "run_chunk", lambda *a, **k: pytest.fail("row recomputed"))
    again = run_plan(plan, data=data, log=lambda s: None, results_path=results)
    assert [e["score"] for e in again["configurations"]] == [e["score"] for e in cfgs]
    assert [e["certification"] for e in again["configurations"]] == [e["certification"] for e in cfgs]


# ------------------------------------------------------------------------------ language models
def _lm_plan(checkpoint, **over):
    plan = {"checkpoint": str(checkpoint), "eval_windows": 8, "trials": TRIALS, "configs_per_call": 3,
            "hbm": {"scheme": ["none", "sparrow"], "refresh_interval_s": [0.064, 2.896]}}
    plan.update(over)
    return validate_plan(plan)


@pytest.mark.parametrize("target, pattern", [
    ({"max_drop_points": 1.0}, "max_drop_points is not a language model's target"),
    ({"metric": "mean"}, "metric 'mean' is not a language model's statistic; choose one of median, p95"),
    ({"max_increase_percent": 5, "max_perplexity": 9}, "either max_increase_percent or max_perplexity"),
    ({"max_perplexity": 0.5}, "max_perplexity must be >= 1"),
])
def test_language_model_targets_are_validated(make_lm_checkpoint, target, pattern):
    with pytest.raises(JaxfaultError, match=pattern):
        _lm_plan(make_lm_checkpoint(), target=target)


def test_classifier_plans_refuse_perplexity_targets_and_lm_plans_generators(make_lm_checkpoint, lenet_checkpoint):
    with pytest.raises(JaxfaultError, match="max_increase_percent is not a classifier's target"):
        _validated(lenet_checkpoint, sram={"voltage": [1.0]}, target={"max_increase_percent": 5})
    with pytest.raises(JaxfaultError, match="metric 'p95' is not a classifier's statistic"):
        _validated(lenet_checkpoint, sram={"voltage": [1.0]}, target={"metric": "p95"})
    with pytest.raises(JaxfaultError, match="a NeuralFuse generator transforms images"):
        _lm_plan(make_lm_checkpoint(), sram={"voltage": [1.0], "generator": [str(lenet_checkpoint)]})
    plan = _lm_plan(make_lm_checkpoint())
    assert plan["task"] == "language_model" and plan["target"]["metric"] == "p95"
    assert plan["target"]["max_increase_percent"] == 5.0


def test_language_model_plan_scores_are_the_engines_inverse_perplexities(make_lm_checkpoint):
    """Each trial's score is 1 / the perplexity engine.evaluate gives for the plan's trial keys;
    the report's perplexity statistics and threshold follow from the scores (module docstring of
    jaxfault.plan.report), and a diverged trial is perplexity inf, never a NaN."""
    from jaxfault.plan.planner import evaluate_configurations

    path = make_lm_checkpoint()
    plan = _lm_plan(path, eval_dtype="bfloat16", trials=6,
                    hbm={"scheme": ["none"], "refresh_interval_s": [0.064, 2.896]},
                    target={"metric": "p95", "max_increase_percent": 2.0})
    data = load_plan_data(plan, log=lambda s: None)
    assert data.task == "language_model" and data.images.shape == (8, 16)
    configs = expand(plan, ("hbm",))
    rows, planner = evaluate_configurations(plan, data, configs, log=lambda s: None)
    keys = plan_trial_keys(plan["seed"], plan["trials"])
    fm = InDtype(compose(stage_fault_model("hbm", plan, "none")), "bfloat16")
    from jaxfault.core.tasks import language_model

    ref = engine.evaluate(data.model, data.variables, data.images, data.labels, fm, [c.rates for c in configs], keys,
                          strategy="loop", task=language_model())
    ppl = np.asarray(ref.metrics["perplexity"], np.float64)
    np.testing.assert_allclose(np.array([r["score"] for r in rows]), 1.0 / ppl, rtol=1e-6)
    assert np.ptp(ppl[1]) > 0 and np.all(np.isfinite(ppl[0]))   # 2.9 s: faults changed the perplexity
    assert planner.clean_score == pytest.approx(float(1.0 / ppl[0, 0]), rel=1e-6)   # 64 ms: no fault drawn

    from jaxfault.plan.report import perplexity_stats, score_stats, target_threshold

    sc = score_stats([0.2, 0.25, 0.0, 0.1, 0.2])
    p = perplexity_stats(sc)
    assert p["diverged"] == 1 and p["p95"] == 1.0 / sc["p5"] and p["median"] == pytest.approx(5.0)
    assert p["median_ci"][0] <= p["median"] <= p["median_ci"][1]
    assert not any(np.isnan(v) for v in (p["median"], p["p95"], *p["median_ci"], *p["p95_ci"]))
    assert target_threshold(plan["target"], "language_model", 0.25) == pytest.approx(0.25 / 1.02)


def test_language_model_plan_through_the_cli(make_lm_checkpoint, tmp_path, capsys):
    from eval.plan import main

    path = make_lm_checkpoint()
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"checkpoint": str(path), "eval_windows": 8, "trials": TRIALS,
                                     "out": str(tmp_path / "out"), "configs_per_call": 4,
                                     "target": {"metric": "median", "max_perplexity": 1e9},
                                     "hbm": {"scheme": ["none"], "refresh_interval_s": [0.064, 1.024]},
                                     "sram": {"voltage": [1.0, 0.92]}}))
    assert main([str(plan_file)]) == 0
    out = capsys.readouterr().out
    assert "target: perplexity median <= 1e+09" in out and "chosen:" in out and "diverged" in out
    report = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert report["task"] == "language_model" and set(report["fronts"]) == {"median", "p95"}
    chosen = report["configurations"][report["chosen"]]
    assert chosen["energy"]["total"] == min(e["energy"]["total"] for e in report["configurations"])
    assert all(e["energy"]["network"] > 0 for e in report["configurations"])   # priced from the model's matmuls
    assert "median perplexity" in (tmp_path / "out" / "plan.md").read_text()
