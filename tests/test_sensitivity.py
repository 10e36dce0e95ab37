"""SPEC 2.2 selection: scores, one global top-fraction threshold, bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfault.errors import JaxfaultError
from jaxfault.pytree import count_kernel_weights, flatten_kernels
from jaxfault.sensitivity import (METHODS, mask_fraction, protection_mask, select_top_fraction,
                                  sensitivity_scores)


def _params():
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    return {"Conv_0": {"kernel": jax.random.normal(k[0], (3, 3, 1, 4)), "bias": jnp.ones((4,))},
            "Dense_0": {"kernel": 0.1 * jax.random.normal(k[1], (37, 5)), "bias": jnp.ones((5,))}}


def _curv(params):
    return jax.tree_util.tree_map(lambda x: jnp.abs(jax.random.normal(jax.random.PRNGKey(x.size), x.shape)) * 1e-3,
                                  params)


@pytest.mark.parametrize("method", METHODS)
def test_fraction_within_one_weight(method):
    params = _params()
    n = count_kernel_weights(params)  # 36 + 185 = 221
    for mask_p in (0.0, 0.013, 0.05, 0.37, 0.5, 1.0):
        mask, frac = protection_mask(params, method, mask_p, _curv(params), key=jax.random.PRNGKey(1))
        assert abs(frac - mask_p) * n <= 0.5 + 1e-9
        assert int(flatten_kernels(mask).sum()) == round(frac * n)
        assert abs(mask_fraction(mask, params) - frac) < 1e-6
        for leaf in (mask["Conv_0"]["bias"], mask["Dense_0"]["bias"]):  # biases are never protected
            assert not bool(jnp.any(leaf))


def test_one_global_threshold_over_all_layers():
    params = _params()
    scores = sensitivity_scores(params, "magnitude")
    mask, frac, thr = select_top_fraction(scores, params, 0.1)
    s, m = np.asarray(flatten_kernels(scores)), np.asarray(flatten_kernels(mask))
    assert s[m].min() >= s[~m].max()
    assert s[m].min() == thr
    # the Dense layer has 10x smaller weights: a global magnitude threshold picks conv weights only
    assert bool(jnp.all(~mask["Dense_0"]["kernel"])) and bool(jnp.any(mask["Conv_0"]["kernel"]))


def test_ties_still_give_exact_count():
    params = {"Dense_0": {"kernel": jnp.ones((10, 10))}}
    mask, frac = protection_mask(params, "magnitude", 0.25)
    assert int(jnp.sum(mask["Dense_0"]["kernel"])) == 25 and frac == 0.25


def test_score_formulas():
    params = _params()
    curv = _curv(params)
    w, h = params["Dense_0"]["kernel"], curv["Dense_0"]["kernel"]
    m = jnp.max(jnp.abs(w))
    sm = sensitivity_scores(params, "SM", curv)["Dense_0"]["kernel"]
    np.testing.assert_allclose(sm, h * m * 1e6 + jnp.abs(w) / m, rtol=1e-6)
    sm2 = sensitivity_scores(params, "SM", curv, alpha=0.0)["Dense_0"]["kernel"]
    np.testing.assert_allclose(sm2, jnp.abs(w) / m, rtol=1e-6)  # alpha 0: per-layer normalised magnitude
    np.testing.assert_allclose(sensitivity_scores(params, "second", curv)["Dense_0"]["kernel"], h)
    np.testing.assert_allclose(sensitivity_scores(params, "saliency", curv)["Dense_0"]["kernel"], h * w ** 2, rtol=1e-6)
    np.testing.assert_allclose(sensitivity_scores(params, "magnitude")["Dense_0"]["kernel"], jnp.abs(w))
    r1 = sensitivity_scores(params, "random", key=jax.random.PRNGKey(1))
    r2 = sensitivity_scores(params, "random", key=jax.random.PRNGKey(2))
    assert not np.allclose(r1["Dense_0"]["kernel"], r2["Dense_0"]["kernel"])
    np.testing.assert_array_equal(sensitivity_scores(params, "sm", curv)["Dense_0"]["kernel"], sm)  # case-insensitive


@pytest.mark.parametrize("mask_p", [-0.01, 1.01, float("nan"), "x"])
def test_bad_mask_p(mask_p):
    with pytest.raises(JaxfaultError):
        protection_mask(_params(), "magnitude", mask_p)


def test_bad_method_and_missing_inputs():
    params = _params()
    with pytest.raises(JaxfaultError):
        protection_mask(params, "hessian", 0.1)
    with pytest.raises(JaxfaultError):
        protection_mask(params, "SM", 0.1)  # no curvature
    with pytest.raises(JaxfaultError):
        protection_mask(params, "random", 0.1)  # no key
    with pytest.raises(JaxfaultError):
        protection_mask(params, "second", 0.1, {"Dense_0": 1.0})  # curvature of the wrong shape
    with pytest.raises(JaxfaultError):
        protection_mask({"Dense_0": {"bias": jnp.ones(3)}}, "magnitude", 0.1)  # no kernels
