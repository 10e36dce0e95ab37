"""Curvature estimators against explicit oracles on tiny models."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxfault.swim.curvature import (becker_lecun_diag, ggn_diag_exact, hessian_diag_exact,
                                     hessian_diag_hutchinson)
from jaxfault.core.errors import JaxfaultError
from tests._fast_init import random_variables


class MLP(nn.Module):
    act: str = "tanh"

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Dense(5)(x)
        x = jnp.tanh(x) if self.act == "tanh" else nn.relu(x)
        return nn.Dense(3)(x)


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(2, (3, 3), padding="VALID")(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.relu(x)
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(3)(x)


def _ce(logits, y):
    return -jax.nn.log_softmax(logits)[y]


def _setup(model, x_shape, seed=0):
    kx, ki, ks = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, x_shape)
    y = jnp.arange(x_shape[0]) % 3
    v = random_variables(model, seed, x)
    if "batch_stats" in v:  # non-trivial running statistics
        v = {"params": v["params"], "batch_stats": {"BatchNorm_0": {
            "mean": jnp.array([0.2, -0.1]), "var": jnp.array([0.5, 2.0])}}}
        v["params"]["BatchNorm_0"] = {"scale": jnp.array([1.5, -0.7]), "bias": jnp.array([0.1, 0.3])}
    rest = {k: val for k, val in v.items() if k != "params"}
    out = lambda p, xb: model.apply({"params": p, **rest}, xb)
    loss = lambda p: jnp.sum(jax.vmap(_ce)(out(p, x), y))
    return v, x, y, out, loss


def _full_hessian(loss, params):
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.hessian(lambda f: loss(unravel(f)))(flat)), unravel


@pytest.mark.parametrize("model,shape,chunk", [(MLP(), (6, 4), 1000), (CNN(), (4, 6, 6, 1), 7)])
def test_exact_diag_equals_jax_hessian(model, shape, chunk):
    v, x, y, out, loss = _setup(model, shape)
    H, _ = _full_hessian(loss, v["params"])
    # the data travels as an argument of the compiled function (loss_fn(params, *data))
    loss_xy = lambda p, xb, yb: jnp.sum(jax.vmap(_ce)(out(p, xb), yb))
    d = ravel_pytree(hessian_diag_exact(loss_xy, v["params"], chunk_size=chunk, data=(x, y)))[0]  # 7: ragged
    np.testing.assert_allclose(d, np.diag(H), rtol=1e-4, atol=1e-6)


def test_hutchinson_converges_to_exact_diag():
    v, x, y, out, loss = _setup(MLP(), (6, 4))
    H, _ = _full_hessian(loss, v["params"])
    S = 3072  # 24 chunks of 128: one compiled chunk shape
    est = np.asarray(ravel_pytree(hessian_diag_hutchinson(loss, v["params"], jax.random.key(1),
                                                          num_samples=S, chunk_size=128))[0])
    # v_i (Hv)_i = H_ii + sum_{j!=i} H_ij v_i v_j: the mean of S probes has std
    # sqrt(sum_{j!=i} H_ij^2 / S) per entry; allow 5 standard errors (+ float slack) on every entry.
    off = H - np.diag(np.diag(H))
    se = np.sqrt((off ** 2).sum(axis=1) / S)
    assert np.all(np.abs(est - np.diag(H)) <= 5 * se + 1e-5)
    assert np.abs(est - np.diag(H)).max() < 0.1 * np.abs(np.diag(H)).max()


@pytest.mark.parametrize("loss_name", ["ce", "mse"])
def test_ggn_diag_equals_explicit_jt_h_j(loss_name):
    v, x, y, out, _ = _setup(MLP(), (5, 4))
    if loss_name == "ce":
        per_ex = _ce
        targets = y
    else:
        targets = jax.random.normal(jax.random.key(5), (5, 3))
        per_ex = lambda o, t: 0.5 * jnp.sum((o - t) ** 2 * jnp.array([1.0, 2.0, 3.0]))
    flat, unravel = ravel_pytree(v["params"])
    J = np.asarray(jax.jacobian(lambda f: out(unravel(f), x))(flat))  # (N, C, P)
    logits = out(v["params"], x)
    G = sum(J[n].T @ np.asarray(jax.hessian(per_ex)(logits[n], targets[n])) @ J[n] for n in range(5))
    chunk = 2 if loss_name == "ce" else 5  # 2 exercises the padded last chunk
    g = ravel_pytree(ggn_diag_exact(out, per_ex, v["params"], x, targets, chunk_size=chunk))[0]
    np.testing.assert_allclose(g, np.diag(G), rtol=1e-4, atol=1e-6)
    if loss_name == "ce":  # with tanh the GGN is not the Hessian: the oracle is not trivial
        H, _ = _full_hessian(lambda p: jnp.sum(jax.vmap(per_ex)(out(p, x), targets)), v["params"])
        assert np.abs(np.diag(H) - np.diag(G)).max() > 1e-3


def test_becker_lecun_equals_hessian_for_one_linear_layer():
    """Softmax regression: d2L/dW_ic2 = sum_n x_ni^2 p_nc (1 - p_nc) exactly, so BL is exact."""
    model = nn.Dense(3)
    v, x, y, out, loss = _setup(model, (7, 4))
    H, unravel = _full_hessian(loss, v["params"])
    bl = becker_lecun_diag(model, v, x, batch_size=3, apply_kwargs={})
    np.testing.assert_allclose(ravel_pytree(bl)[0], np.diag(H), rtol=1e-5, atol=1e-6)


def _softmax_curv(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return p * (1 - p)


def test_becker_lecun_mlp_matches_hand_written_recursion():
    model = MLP(act="relu")
    v, x, *_ = _setup(model, (9, 4), seed=3)
    P = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), v["params"])
    x = np.asarray(x, np.float64)
    W1, b1, W2, b2 = P["Dense_0"]["kernel"], P["Dense_0"]["bias"], P["Dense_1"]["kernel"], P["Dense_1"]["bias"]
    h1 = x @ W1 + b1
    a = np.maximum(h1, 0)
    h = _softmax_curv(a @ W2 + b2)
    c_W2 = (a ** 2).T @ h
    c_h1 = (h @ (W2 ** 2).T) * (h1 > 0)
    c_W1 = (x ** 2).T @ c_h1
    bl = becker_lecun_diag(model, v, jnp.asarray(x, jnp.float32), batch_size=4)
    np.testing.assert_allclose(bl["Dense_1"]["kernel"], c_W2, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(bl["Dense_0"]["kernel"], c_W1, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(bl["Dense_0"]["bias"], c_h1.sum(0), rtol=1e-4, atol=1e-7)


def test_becker_lecun_cnn_matches_hand_written_recursion():
    """Conv -> BN -> ReLU -> avgpool -> Dense, oracle written with explicit loops (the second-order pass rules)."""
    model = CNN()
    v, x32, *_ = _setup(model, (3, 6, 6, 1), seed=4)
    P = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), v["params"])
    S = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), v["batch_stats"])
    x = np.asarray(x32, np.float64)
    W, b = P["Conv_0"]["kernel"], P["Conv_0"]["bias"]  # (3,3,1,2)
    N = x.shape[0]
    y = np.zeros((N, 4, 4, 2))
    for i in range(4):
        for j in range(4):
            y[:, i, j, :] = np.einsum("nabc,abco->no", x[:, i:i + 3, j:j + 3, :], W) + b
    k = P["BatchNorm_0"]["scale"] / np.sqrt(S["BatchNorm_0"]["var"] + 1e-5)
    z = (y - S["BatchNorm_0"]["mean"]) * k + P["BatchNorm_0"]["bias"]
    r = np.maximum(z, 0)
    q = r.reshape(N, 2, 2, 2, 2, 2).mean(axis=(2, 4))  # (N, I, J, o)
    f = q.reshape(N, -1)
    V = P["Dense_0"]["kernel"]
    h = _softmax_curv(f @ V + P["Dense_0"]["bias"])
    c_V = (f ** 2).T @ h
    c_q = (h @ (V ** 2).T).reshape(N, 2, 2, 2)
    c_r = np.repeat(np.repeat(c_q, 2, axis=1), 2, axis=2) / 4.0  # avg pool applied as to values
    c_y = c_r * (z > 0) * k ** 2
    c_W = np.zeros_like(W)
    for i in range(4):
        for j in range(4):
            c_W += np.einsum("nabc,no->abco", x[:, i:i + 3, j:j + 3, :] ** 2, c_y[:, i, j, :])
    bl = becker_lecun_diag(model, v, x32, batch_size=2)
    np.testing.assert_allclose(bl["Dense_0"]["kernel"], c_V, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(bl["Conv_0"]["kernel"], c_W, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(bl["Conv_0"]["bias"], c_y.sum(axis=(0, 1, 2)), rtol=1e-4, atol=1e-7)
    assert jax.tree_util.tree_structure(bl) == jax.tree_util.tree_structure(v["params"])


def test_bad_arguments():
    v, x, y, out, loss = _setup(MLP(), (3, 4))
    with pytest.raises(JaxfaultError):
        hessian_diag_exact(loss, v["params"], chunk_size=0)
    with pytest.raises(JaxfaultError):
        hessian_diag_hutchinson(loss, v["params"], jax.random.key(0), num_samples=0)
    with pytest.raises(JaxfaultError):
        ggn_diag_exact(out, _ce, v["params"], x, y[:2])
    with pytest.raises(JaxfaultError):
        becker_lecun_diag(MLP(), v, x, batch_size=-1)
