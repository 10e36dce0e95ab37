"""Write-verify selection as the SWIM code computes it: the score against a numpy transcription of
the code's procedure (layer normalisation, second-order pass, gradient term), one global
threshold, exact fractions, keys and bad input."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfault.core.errors import JaxfaultError
from jaxfault.models.layers import Dense
from jaxfault.core.pytree import count_kernel_weights, flatten_kernels
from jaxfault.swim.selection import (METHODS, batch_mean_gradient_sum, loss_curvature, mask_fraction,
                                     protection_mask, second_order_buffer, select_top_fraction, selection_buffer,
                                     sensitivity_scores, write_verify_mask)


class TinyMLP(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(Dense(5)(x))
        x = nn.relu(Dense(4)(x))
        return Dense(3)(x)


def _setup():
    model = TinyMLP()
    kx, ky, kp = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(kx, (10, 6), jnp.float32)
    y = jax.random.randint(ky, (10,), 0, 3)
    variables = model.init(kp, x[:1])
    # layers of very different scales, so the per-layer normalisation matters
    variables = {"params": {name: {"kernel": layer["kernel"] * f, "bias": layer["bias"] + 0.1}
                            for (name, layer), f in zip(variables["params"].items(), (3.0, 0.5, 1.0))}}
    return model, dict(variables), np.asarray(x), np.asarray(y)


def reference_buffer(params, x, y, batch_size):
    """numpy (float64) transcription of the code's procedure: each layer stores W/s and scales its
    output by s; over consecutive batches it accumulates (a) the second-order backward pass, which
    starts from p(1-p) at the logits (summed over examples), goes back through y = s * (x @ Wn) + b
    with squared weights, reaches Wn as sum (s x)^2 * c, and is masked by ReLU's 0/1 slope; and
    (b) the gradient of the batch-mean cross-entropy with respect to Wn. Buffer = (a) + 2 (b)."""
    names = ["Dense_0", "Dense_1", "Dense_2"]
    w = [np.asarray(params[k]["kernel"], np.float64) for k in names]
    b = [np.asarray(params[k]["bias"], np.float64) for k in names]
    s = [np.abs(wi).max() for wi in w]
    wn = [wi / si for wi, si in zip(w, s)]
    curv = [np.zeros_like(wi) for wi in w]
    grad = [np.zeros_like(wi) for wi in w]
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size].astype(np.float64), y[start:start + batch_size]
        acts, pre = [xb], []
        for i in range(3):
            z = s[i] * (acts[-1] @ wn[i]) + b[i]
            pre.append(z)
            acts.append(np.maximum(z, 0.0) if i < 2 else z)
        logits = acts[-1]
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        c = p * (1 - p)                                   # second-order pass
        g = (p - np.eye(3)[yb]) / len(xb)                 # gradient of the batch-mean cross-entropy
        for i in (2, 1, 0):
            a = acts[i]
            for n in range(len(xb)):
                curv[i] += np.outer((s[i] * a[n]) ** 2, c[n])
            grad[i] += s[i] * a.T @ g
            if i > 0:
                relu_slope = (pre[i - 1] > 0).astype(np.float64)
                c = (c @ ((s[i] * wn[i]) ** 2).T) * relu_slope
                g = (g @ (s[i] * wn[i]).T) * relu_slope
    return {k: cv + 2 * gr for k, cv, gr in zip(names, curv, grad)}, dict(zip(names, wn))


def _flat(tree, names=("Dense_0", "Dense_1", "Dense_2")):
    return np.concatenate([np.ravel(np.asarray(tree[k] if not isinstance(tree[k], dict) else tree[k]["kernel"]))
                           for k in names])


def test_buffer_and_scores_equal_numpy_transcription():
    model, variables, x, y = _setup()
    params = variables["params"]
    ref_buf, wn = reference_buffer(params, x, y, batch_size=4)  # batches of 4, 4, 2
    buf = selection_buffer(model, variables, x, y, batch_size=4)
    got, want = _flat(buf), _flat(ref_buf)
    # float32 sums over <= 10 examples against float64: relative to the buffer's scale
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    wn_flat = np.abs(_flat(wn))
    for method, ref_score in (("SM", np.abs(want) * 1e6 + wn_flat), ("second", np.abs(want)),
                              ("magnitude", wn_flat), ("saliency", np.abs(want) * wn_flat ** 2)):
        score = _flat(sensitivity_scores(params, method, buf))
        np.testing.assert_allclose(score, ref_score, rtol=1e-5, atol=1e-5 * np.abs(ref_score).max(), err_msg=method)
        for mask_p in (0.05, 0.2, 0.5):
            if mask_p == 0.05:  # the public entry point once per method, the same pieces otherwise
                mask = write_verify_mask(model, variables, x, y, method=method, mask_p=mask_p, batch_size=4)
            else:
                mask, _ = protection_mask(params, method, mask_p, buf)
            k = int(np.floor(mask_p * want.size + 0.5))
            ref_mask = np.zeros(want.size, bool)
            ref_mask[np.argsort(-ref_score, kind="stable")[:k]] = True
            np.testing.assert_array_equal(_flat(mask), ref_mask, err_msg=f"{method} {mask_p}")


def test_buffer_pieces_and_gradient_term():
    """s^2 * C + 2 s G with C the Becker-LeCun curvature and G the summed batch-mean gradient; the
    gradient term matters (it changes the buffer) and batches are averaged over their own size."""
    model, variables, x, y = _setup()
    params = variables["params"]
    c = loss_curvature(model, variables, x, y)
    g = batch_mean_gradient_sum(model, variables, x, y, batch_size=4)
    w = params["Dense_1"]["kernel"]
    s = jnp.max(jnp.abs(w))
    buf = second_order_buffer(params, c, g)["Dense_1"]["kernel"]
    np.testing.assert_allclose(buf, s ** 2 * c["Dense_1"]["kernel"] + 2 * s * g["Dense_1"]["kernel"], rtol=1e-6)
    no_grad = selection_buffer(model, variables, x, y, gradient_term=False)["Dense_1"]["kernel"]
    np.testing.assert_allclose(no_grad, s ** 2 * c["Dense_1"]["kernel"], rtol=1e-6)
    assert float(jnp.max(jnp.abs(buf - no_grad))) > 1e-3 * float(jnp.max(jnp.abs(buf)))
    # G equals the explicit sum of batch means
    def mean_ce(p, xb, yb):
        logits = model.apply({"params": p}, xb)
        return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(len(yb)), yb])
    explicit = sum(jax.grad(mean_ce)(params, x[i:i + 4], y[i:i + 4])["Dense_0"]["kernel"] for i in (0, 4, 8))
    np.testing.assert_allclose(g["Dense_0"]["kernel"], explicit, rtol=1e-5, atol=1e-7)


def test_sm_and_second_give_the_same_mask():
    """With alpha = 1e6 the normalised magnitude only breaks ties: SM and second agree."""
    model, variables, x, y = _setup()
    for mask_p in (0.05, 0.1):
        sm = write_verify_mask(model, variables, x, y, method="SM", mask_p=mask_p, batch_size=4)
        second = write_verify_mask(model, variables, x, y, method="second", mask_p=mask_p, batch_size=4)
        np.testing.assert_array_equal(flatten_kernels(sm), flatten_kernels(second))


@pytest.mark.parametrize("method", METHODS)
def test_mask_is_bool_pytree_with_exact_fraction(method):
    model, variables, x, y = _setup()
    params = variables["params"]
    n = count_kernel_weights(params)  # 30 + 20 + 12 = 62
    buf = selection_buffer(model, variables, x, y, batch_size=4)
    for mask_p in (0.0, 0.013, 0.05, 0.37, 0.5, 1.0):
        if mask_p == 0.05:
            mask = write_verify_mask(model, variables, x, y, method=method, mask_p=mask_p, batch_size=4,
                                     key=jax.random.key(1))
        else:
            mask, _ = protection_mask(params, method, mask_p, buf, key=jax.random.key(1))
        assert jax.tree_util.tree_structure(mask) == jax.tree_util.tree_structure(params)
        assert all(m.dtype == jnp.bool_ and m.shape == p.shape
                   for m, p in zip(jax.tree_util.tree_leaves(mask), jax.tree_util.tree_leaves(params)))
        assert int(flatten_kernels(mask).sum()) == int(np.floor(mask_p * n + 0.5))
        for layer in mask.values():  # biases are never verified
            assert not bool(jnp.any(layer["bias"]))


def test_quantile_threshold_is_the_codes_rule():
    """threshold='quantile': strictly above the linearly interpolated (1 - mask_p) quantile."""
    model, variables, x, y = _setup()
    params = variables["params"]
    buf = selection_buffer(model, variables, x, y, batch_size=4)
    scores = sensitivity_scores(params, "SM", buf)
    flat = np.asarray(flatten_kernels(scores))
    for mask_p in (0.05, 0.1, 0.37):
        mask, frac, thr = select_top_fraction(scores, params, mask_p, threshold="quantile")
        np.testing.assert_array_equal(np.asarray(flatten_kernels(mask)), flat > np.quantile(flat, 1 - mask_p))
        # without ties that is ceil((n - 1) * mask_p) weights
        assert round(frac * flat.size) == int(np.ceil((flat.size - 1) * mask_p - 1e-9))
    ties = {"Dense_0": {"kernel": jnp.ones((10, 10))}}
    mask, frac, _ = select_top_fraction(ties, ties, 0.25, threshold="quantile")
    assert frac == 0.0  # all tied at the threshold: the code verifies none of them


def test_one_global_threshold_over_all_layers():
    model, variables, x, y = _setup()
    params = variables["params"]
    scores = sensitivity_scores(params, "SM", selection_buffer(model, variables, x, y, batch_size=4))
    mask, frac, thr = select_top_fraction(scores, params, 0.1)
    s, m = np.asarray(flatten_kernels(scores)), np.asarray(flatten_kernels(mask))
    assert s[m].min() >= s[~m].max() and s[m].min() == thr


def test_ties_still_give_exact_count():
    params = {"Dense_0": {"kernel": jnp.ones((10, 10))}}
    mask, frac = protection_mask(params, "magnitude", 0.25)
    assert int(jnp.sum(mask["Dense_0"]["kernel"])) == 25 and frac == 0.25
    assert abs(mask_fraction(mask, params) - 0.25) < 1e-7


def test_random_uses_the_given_typed_key():
    params = _setup()[1]["params"]
    a, _ = protection_mask(params, "random", 0.3, key=jax.random.key(1))
    b, _ = protection_mask(params, "random", 0.3, key=jax.random.key(1))
    c, _ = protection_mask(params, "random", 0.3, key=jax.random.key(2))
    np.testing.assert_array_equal(flatten_kernels(a), flatten_kernels(b))
    assert not np.array_equal(flatten_kernels(a), flatten_kernels(c))
    with pytest.raises(JaxfaultError):
        protection_mask(params, "random", 0.3)  # no key
    with pytest.raises(JaxfaultError):
        protection_mask(params, "random", 0.3, key=jax.random.PRNGKey(1))  # raw uint32 key


@pytest.mark.parametrize("mask_p", [-0.01, 1.01, float("nan"), "x"])
def test_bad_mask_p(mask_p):
    with pytest.raises(JaxfaultError):
        protection_mask(_setup()[1]["params"], "magnitude", mask_p)


def test_bad_method_and_missing_inputs():
    model, variables, x, y = _setup()
    params = variables["params"]
    with pytest.raises(JaxfaultError):
        protection_mask(params, "hessian", 0.1)
    with pytest.raises(JaxfaultError):
        protection_mask(params, "SM", 0.1)  # no buffer
    with pytest.raises(JaxfaultError):
        protection_mask(params, "second", 0.1, {"Dense_0": 1.0})  # buffer of the wrong shape
    with pytest.raises(JaxfaultError):
        protection_mask({"Dense_0": {"bias": jnp.ones(3)}}, "magnitude", 0.1)  # no kernels
    with pytest.raises(JaxfaultError):
        write_verify_mask(model, variables, x, y, batch_size=0)
    with pytest.raises(JaxfaultError):
        write_verify_mask(model, variables, x, y[:3])  # labels of another length
    with pytest.raises(JaxfaultError):
        write_verify_mask(model, variables, x, y, threshold="median")
    with pytest.raises(JaxfaultError):
        write_verify_mask(model, variables, x, y, curvature="newton")
