"""HBM fault model + engine: batched trials == separate calls, stats, fault-free and clean paths."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfault import engine
from jaxfault.core import tasks
from jaxfault.experiment.ecc_eval import SparrowEvalConfig, evaluate_schemes
from jaxfault.ecc.hbm import HBMFaults
from jaxfault.core.errors import JaxfaultError
from tests._fast_init import random_variables


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Dense(16)(x.reshape(x.shape[0], -1))
        return nn.Dense(4)(nn.relu(x))


@pytest.fixture(scope="module")
def setup():
    model = Tiny()
    x = jax.random.normal(jax.random.key(0), (64, 8))
    variables = random_variables(model, 1, x)
    labels = jnp.argmax(model.apply(variables, x), -1)
    return model, variables, x, labels


def test_batched_trials_equal_separate_calls(setup):
    model, variables, x, labels = setup
    fm = HBMFaults(scheme="sparrow", block_size=32, zero_to_one=0.1)
    keys = jax.random.split(jax.random.key(5), 3)
    rates = [1e-2, 2e-2]
    ref = engine.evaluate(model, variables, x, labels, fm, rates, keys, strategy="loop")
    for strategy in ("map", "vmap"):
        got = engine.evaluate(model, variables, x, labels, fm, rates, keys, strategy=strategy)
        for d_got, d_ref in ((got.metrics, ref.metrics), (got.stats, ref.stats)):
            for k in d_ref:
                np.testing.assert_array_equal(d_got[k], d_ref[k], err_msg=f"{strategy} {k}")
    # a single separate perturbation with the same key and rate gives the same stats
    _, prepared, _ = engine.prepare(model, variables, x, fm.with_rate_bound(2e-2))
    _, stats = jax.jit(lambda v, k: fm.with_rate_bound(2e-2).perturb(k, v, jnp.float32(2e-2)))(prepared, keys[1])
    assert float(stats["realised_ber"]) == float(ref.stats["realised_ber"][1, 1])
    assert float(stats["changed_fraction"]) == float(ref.stats["changed_fraction"][1, 1])
    assert len(set(ref.stats["n_faults"][1].tolist())) == 3           # trials differ


def test_fault_free_scheme_equals_clean_and_stats(setup):
    model, variables, x, labels = setup
    cfg = SparrowEvalConfig(bers=(0.0,), schemes=("none",), zero_to_one=0.0, trials=2, strategy="map")
    r = evaluate_schemes(cfg, model, variables, x, labels)
    row = r["rows"][0]
    assert row["top1"]["mean"] == r["clean_bf16"]["top1"] and row["fault_free"]["top1"] == r["clean_bf16"]["top1"]
    assert row["realised_ber"]["mean"] == 0 and row["changed_fraction"]["mean"] == 0
    assert row["protected_weights"] == 8 * 16 + 16 * 4 and row["stored_bits_per_weight"] == 16
    cfg = SparrowEvalConfig(bers=(3e-2,), schemes=("secded",), zero_to_one=0.0, trials=4, strategy="map")
    row = evaluate_schemes(cfg, model, variables, x, labels)["rows"][0]
    assert 0.02 < row["realised_ber"]["mean"] < 0.04 and row["changed_fraction"]["mean"] > 0
    assert len(row["top1"]["values"]) == 4


def test_sweep_compiles_one_program_per_scheme(setup):
    """Rates are traced: a 3-BER evaluation runs one compiled program (cache size 1)."""
    model, variables, x, labels = setup
    fm = HBMFaults(scheme="sparrow", block_size=32)
    eval_model, prepared, xx = engine.prepare(model, variables, x, fm.with_rate_bound(1e-2))
    prog = engine.make_trial_program(tasks.make_metric_fn(eval_model, 64), fm.with_rate_bound(1e-2), strategy="map")
    keys = jax.random.split(jax.random.key(0), 2)
    for rates in ([1e-4, 1e-3, 1e-2], [2e-3, 3e-3, 4e-3]):
        engine.evaluate(model, variables, x, labels, fm, rates, keys, program=prog)
    assert prog.compiled_programs() == 1


def test_nan_weights_rejected_with_leaf_name(setup):
    model, variables, x, labels = setup
    bad = jax.tree_util.tree_map(lambda a: a, variables)
    bad["params"]["Dense_1"]["kernel"] = bad["params"]["Dense_1"]["kernel"].at[2, 3].set(jnp.nan)
    with pytest.raises(JaxfaultError, match="Dense_1/kernel.*nan"):
        HBMFaults().prepare(bad)


def test_fault_free_pass_is_skipped_only_for_bit_identical_weights(setup):
    """evaluate_schemes evaluates the clean model once: a scheme whose decoded fault-free weights
    equal already-evaluated variables bit for bit takes their metrics; any other runs its own
    forward pass. Bogus known metrics show which route was taken."""
    from jaxfault.experiment.ecc_eval import fault_free_accuracy

    model, variables, x, labels = setup
    cfg = SparrowEvalConfig(bers=(1e-3,), schemes=("sparrow",), trials=2, strategy="map")
    fm = cfg.fault_model("sparrow")
    real = fault_free_accuracy(fm, model, variables, x, labels, cfg, (1,))
    _, prepared, _ = engine.prepare(model, variables, x, fm)
    bogus = {"top1": -1.0}
    assert fault_free_accuracy(fm, model, variables, x, labels, cfg, (1,), known=[(prepared, bogus)]) == bogus
    k = prepared["params"]["Dense_0"]["kernel"]
    nudged = {**prepared, "params": {**prepared["params"], "Dense_0": {**prepared["params"]["Dense_0"],
                                                                       "kernel": k.at[0, 0].set(-k[0, 0])}}}
    assert fault_free_accuracy(fm, model, variables, x, labels, cfg, (1,), known=[(nudged, bogus)]) == real
    # the whole report: the same numbers whether or not the clean pass is shared between schemes
    cfg3 = SparrowEvalConfig(bers=(2e-2,), schemes=("sparrow", "secded", "none"), zero_to_one=0.1, trials=3,
                             strategy="map")
    rows = evaluate_schemes(cfg3, model, variables, x, labels)["rows"]
    for row in rows[1:]:    # the first scheme evaluates the clean model itself
        alone = evaluate_schemes(SparrowEvalConfig(bers=(2e-2,), schemes=(row["scheme"],), zero_to_one=0.1, trials=3,
                                                   strategy="map"), model, variables, x, labels)["rows"][0]
        assert row["fault_free"] == alone["fault_free"] == real
        assert row["top1"]["values"] == alone["top1"]["values"] and row["drop_vs_clean_points"] == alone["drop_vs_clean_points"]


def test_same_bits_compares_structure_dtype_and_bit_patterns():
    from jaxfault.core.pytree import same_bits

    a = {"w": jnp.array([0.0, 1.0, jnp.nan], jnp.float32), "b": jnp.ones(2, jnp.bfloat16)}
    assert same_bits(a, {"w": jnp.array([0.0, 1.0, jnp.nan]), "b": jnp.ones(2, jnp.bfloat16)})
    assert not same_bits(a, {"w": jnp.array([-0.0, 1.0, jnp.nan]), "b": jnp.ones(2, jnp.bfloat16)})
    assert not same_bits(a, {"w": a["w"], "b": jnp.ones(2, jnp.float32)})
    assert not same_bits(a, {"w": a["w"], "b": jnp.ones(3, jnp.bfloat16)})
    assert not same_bits(a, {"w": a["w"], "c": a["b"]})


def test_compute_dtype_float32_equals_the_engine_in_float32(setup):
    """SparrowEvalConfig(compute_dtype='float32') evaluates exactly what engine.evaluate does with
    compute_dtype='float32' on the same keys; its fault-free pass runs in float32 too."""
    from jaxfault.core.keys import root_key, trial_keys

    model, variables, x, labels = setup
    cfg = SparrowEvalConfig(bers=(2e-2,), schemes=("sparrow",), zero_to_one=0.1, trials=3, strategy="map",
                            compute_dtype="float32")
    r = evaluate_schemes(cfg, model, variables, x, labels)
    want = engine.evaluate(model, variables, x, labels, cfg.fault_model("sparrow"), [2e-2],
                           trial_keys(root_key(0), 3), strategy="map", compute_dtype="float32")
    assert r["evaluation_dtype"] == "float32" and r["rows"][0]["top1"]["values"] == want.accuracy[0].tolist()
    assert r["clean_bf16"] == want.clean == r["rows"][0]["fault_free"]
    with pytest.raises(JaxfaultError, match="compute dtype must be bfloat16 or float32"):
        SparrowEvalConfig(bers=(1e-3,), compute_dtype="float16")
    with pytest.raises(JaxfaultError, match="`compute_dtype` float32 needs `estimator` plain"):
        SparrowEvalConfig(bers=(1e-3,), compute_dtype="float32", estimator="stratified")
