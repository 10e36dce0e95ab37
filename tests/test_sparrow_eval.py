"""Error-injected inference pipeline: batched T-trial path == T separate calls, stats, clean path."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eval.sparrow import evaluate_clean, evaluate_scheme, run_trials
from jaxfault.ecc import get_scheme
from jaxfault.ecc.pipeline import faulty_params, protect
from jaxfault.errors import JaxfaultError


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Dense(16)(x.reshape(x.shape[0], -1))
        return nn.Dense(4)(nn.relu(x))


def metric(model):
    def fn(variables, images, labels):
        logits = model.apply(variables, images)
        return {"top1": jnp.mean(jnp.argmax(logits, -1) == labels), "logit_sum": jnp.sum(logits.astype(jnp.float32))}
    return fn


@pytest.fixture(scope="module")
def setup():
    model = Tiny()
    x = jax.random.normal(jax.random.key(0), (64, 8))
    variables = model.init(jax.random.key(1), x)
    labels = jnp.argmax(model.apply(variables, x), -1)
    return model, variables, x, labels


def test_batched_trials_equal_separate_calls(setup):
    model, variables, x, labels = setup
    prot = protect(variables["params"], get_scheme("sparrow", 32))
    keys = jax.random.split(jax.random.key(5), 3)
    fn = metric(model)
    ref = run_trials(fn, variables, x, labels, prot, 2e-2, 0.1, keys, strategy="loop")
    for strategy in ("map", "vmap"):
        got = run_trials(fn, variables, x, labels, prot, 2e-2, 0.1, keys, strategy=strategy)
        for k in ref:
            np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(ref[k]), err_msg=f"{strategy} {k}")
    # a single separate call with the same key gives the same decoded weights and stats
    params, stats = faulty_params(keys[1], jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), variables["params"]),
                                  prot, 2e-2, 0.1, dtype=jnp.bfloat16)
    assert float(stats["realised_ber"]) == float(ref["realised_ber"][1])
    assert float(stats["changed_fraction"]) == float(ref["changed_fraction"][1])
    assert len(set(np.asarray(ref["logit_sum"]).tolist())) == 3           # trials differ


def test_fault_free_scheme_equals_clean_and_stats(setup):
    model, variables, x, labels = setup
    fn = metric(model)
    clean = evaluate_clean(fn, variables, x, labels)
    r = evaluate_scheme(fn, variables, x, labels, "none", 64, 0.0, 0.0, 2, 0, strategy="map")
    assert r["top1"]["mean"] == clean["top1"] and r["fault_free"]["top1"] == clean["top1"]
    assert r["realised_ber"]["mean"] == 0 and r["changed_fraction"]["mean"] == 0
    assert r["protected_weights"] == 8 * 16 + 16 * 4 and r["stored_bits_per_weight"] == 16
    r = evaluate_scheme(fn, variables, x, labels, "secded", 64, 3e-2, 0.0, 4, 0, strategy="map")
    assert 0.02 < r["realised_ber"]["mean"] < 0.04 and r["changed_fraction"]["mean"] > 0
    assert len(r["top1"]["values"]) == 4


def test_nan_weights_rejected_with_leaf_name(setup):
    model, variables, x, labels = setup
    bad = jax.tree_util.tree_map(lambda a: a, variables)
    bad["params"]["Dense_1"]["kernel"] = bad["params"]["Dense_1"]["kernel"].at[2, 3].set(jnp.nan)
    with pytest.raises(JaxfaultError, match="Dense_1/kernel.*nan"):
        protect(bad["params"], get_scheme("sparrow", 64))
