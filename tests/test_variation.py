"""CiM device-variation model: per-weight noise std, determinism, batching, the fault model, bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfault.core.errors import JaxfaultError
from jaxfault.faults import FaultStats
from jaxfault.core.protocol import FaultModel
from jaxfault.swim.selection import full_mask
from jaxfault.swim.variation import (CiMVariation, apply_variation, check_bits_per_device, cim_variation,
                                     device_weights, variation_std, with_write_verify)


def _params(key=0, shape=(200, 500)):
    k1, k2 = jax.random.split(jax.random.key(key))
    w = jax.random.uniform(k1, shape, minval=-0.5, maxval=0.5).at[0, 0].set(-0.8)  # max|W| = 0.8
    return {"Dense_0": {"kernel": w, "bias": jnp.ones((shape[1],))},
            "BatchNorm_0": {"scale": jnp.ones((3,)), "bias": jnp.zeros((3,))},
            "Conv_0": {"kernel": jax.random.normal(k2, (3, 3, 2, 4)), "bias": jnp.zeros((4,))}}


@pytest.mark.parametrize("n_bits,m_bits", [(8, 1), (6, 3)])
def test_noise_std_matches_formula(n_bits, m_bits):
    params = _params()
    w = params["Dense_0"]["kernel"]
    half = jnp.zeros(w.shape, bool).at[:100].set(True)  # rows 0..99 write-verified
    mask = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, bool), params)
    mask["Dense_0"]["kernel"] = half
    dev_var, write_var = 0.1, 0.03
    noisy = apply_variation(params, mask, jax.random.key(7), dev_var, write_var, n_bits, m_bits)
    noise = np.asarray(noisy["Dense_0"]["kernel"] - w, np.float64)
    c = np.sqrt(sum(4.0 ** (-i * m_bits) for i in range(1, n_bits // m_bits + 1)))
    for rows, sigma in ((slice(0, 100), write_var), (slice(100, 200), dev_var)):
        x = noise[rows].ravel()  # 50,000 iid normal draws
        expected = 0.8 * sigma * c
        # sample std of n normals: relative standard error 1/sqrt(2(n-1)) = 0.32 %; allow 5 SE
        assert abs(x.std() / expected - 1) < 5 / np.sqrt(2 * (x.size - 1))
        assert abs(x.mean()) < 5 * expected / np.sqrt(x.size)
    std_tree = variation_std(params, mask, dev_var, write_var, n_bits, m_bits)
    np.testing.assert_allclose(std_tree["Dense_0"]["kernel"][0, 0], 0.8 * write_var * c, rtol=1e-6)
    np.testing.assert_allclose(std_tree["Dense_0"]["kernel"][150, 0], 0.8 * dev_var * c, rtol=1e-6)


def test_noise_is_the_per_device_sum():
    """Bit-level restatement of the formula: W + max|W| * sum_i 2^(-i m) * sigma * z_i, z_i = N(0,1)."""
    params = _params()
    key = jax.random.key(3)
    noisy = apply_variation(params, None, key, 0.2, 0.03, 8, 2)
    kernels = [("Conv_0", 0), ("Dense_0", 1)]  # flatten order: BatchNorm_0, Conv_0, Dense_0
    for name, i in kernels:
        w = params[name]["kernel"]
        z = jax.random.normal(jax.random.fold_in(key, i), (4,) + w.shape)
        expect = w + jnp.max(jnp.abs(w)) * sum(2.0 ** (-(j + 1) * 2) * 0.2 * z[j] for j in range(4))
        np.testing.assert_allclose(noisy[name]["kernel"], expect, rtol=1e-6, atol=1e-7)


def test_only_kernels_are_perturbed_and_zero_variance_is_identity():
    params = _params()
    noisy = apply_variation(params, None, jax.random.key(1), 0.3, 0.03)
    for name in ("Dense_0", "Conv_0"):
        assert not np.allclose(noisy[name]["kernel"], params[name]["kernel"])
        np.testing.assert_array_equal(noisy[name]["bias"], params[name]["bias"])
    np.testing.assert_array_equal(noisy["BatchNorm_0"]["scale"], params["BatchNorm_0"]["scale"])
    same = apply_variation(params, None, jax.random.key(1), 0.0, 0.0)
    jax.tree_util.tree_map(np.testing.assert_array_equal, same, params)
    # everything verified with write_var == dev_var equals nothing verified (same draws)
    a = apply_variation(params, full_mask(params, True), jax.random.key(2), 0.1, 0.1)
    b = apply_variation(params, None, jax.random.key(2), 0.1, 0.1)
    jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7), a, b)


def test_same_key_same_noise_and_vmap_equals_loop():
    params = _params(shape=(6, 7))
    keys = jax.random.split(jax.random.key(0), 5)
    f = lambda k: apply_variation(params, None, k, 0.1, 0.03)
    batched = jax.jit(jax.vmap(f))(keys)
    for j, k in enumerate(keys):
        one = f(k)
        jax.tree_util.tree_map(lambda b, o: np.testing.assert_allclose(b[j], o, rtol=1e-6, atol=1e-7), batched, one)
    jax.tree_util.tree_map(np.testing.assert_array_equal, f(keys[0]), f(keys[0]))
    assert not np.allclose(batched["Dense_0"]["kernel"][0], batched["Dense_0"]["kernel"][1])


def test_engine_strategies_agree_for_cim_variation():
    """The CiM fault model through the engine: loop == map == map:4 == vmap, mask as data."""
    import flax.linen as nn

    from jaxfault import engine

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(3)(x)

    model = Tiny()
    x = jax.random.normal(jax.random.key(4), (64, 8))
    variables = model.init(jax.random.key(0), x)
    y = jnp.argmax(model.apply(variables, x), -1)
    mask = full_mask(variables["params"], False)
    v = {**variables, "write_verify": mask}
    keys = jax.random.split(jax.random.key(9), 6)
    out = {s: engine.evaluate(model, v, x, y, CiMVariation(), [0.3, 1.0], keys, strategy=s).accuracy
           for s in ("loop", "map", "map:4", "vmap")}
    for s in out:
        np.testing.assert_array_equal(out[s], out["loop"], err_msg=s)
    assert out["loop"].shape == (2, 6) and out["loop"][1].mean() <= out["loop"][0].mean() + 0.1


def test_device_weights():
    np.testing.assert_allclose(device_weights(8, 1), [2.0 ** -i for i in range(1, 9)])
    np.testing.assert_allclose(device_weights(8, 4), [2.0 ** -4, 2.0 ** -8])


@pytest.mark.parametrize("dev_var,write_var", [(-0.1, 0.03), (0.1, -1e-9), (float("nan"), 0.0),
                                               (0.1, float("inf")), ("abc", 0.1)])
def test_bad_variances(dev_var, write_var):
    with pytest.raises(JaxfaultError):
        apply_variation(_params(shape=(2, 2)), None, jax.random.key(0), dev_var, write_var)


@pytest.mark.parametrize("n_bits,m_bits", [(8, 3), (8, 0), (0, 1), (8.0, 1), (True, 1), (4, 8)])
def test_bad_bits(n_bits, m_bits):
    with pytest.raises(JaxfaultError):
        check_bits_per_device(n_bits, m_bits)
    with pytest.raises(JaxfaultError):
        apply_variation(_params(shape=(2, 2)), None, jax.random.key(0), 0.1, 0.03, n_bits, m_bits)


def test_mask_of_wrong_structure():
    params = _params(shape=(2, 2))
    with pytest.raises(JaxfaultError):
        apply_variation(params, {"Dense_0": True}, jax.random.key(0), 0.1, 0.03)


def test_training_noise_fn_is_a_fresh_draw_with_straight_through_gradient():
    from jaxfault.swim.variation import make_training_noise_fn

    params = _params(shape=(6, 7))
    fn = make_training_noise_fn(0.2)
    key = jax.random.key(5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                           fn(params, key), apply_variation(params, None, key, 0.2, 0.0))
    c = jax.random.normal(jax.random.key(6), (6, 7))
    g = jax.grad(lambda p: jnp.sum(fn(p, key)["Dense_0"]["kernel"] * c))(params)
    np.testing.assert_allclose(g["Dense_0"]["kernel"], c, rtol=1e-6)  # noise is a constant: d/dW = c
    with pytest.raises(JaxfaultError):
        make_training_noise_fn(-0.1)


def _half_mask(params):
    mask = full_mask(params, False)
    mask["Dense_0"]["kernel"] = jnp.zeros(params["Dense_0"]["kernel"].shape, bool).at[:3].set(True)
    return mask


def test_cim_variation_same_key_same_noise_as_apply_variation():
    params = _params(shape=(6, 7))
    variables = {"params": params, "batch_stats": {"x": jnp.ones(2)}}
    mask = _half_mask(params)
    fm = cim_variation(write_var=0.05, n_bits=8, m_bits=2)
    assert isinstance(fm, FaultModel) and fm.rate_name == "dev_var" and fm == CiMVariation(0.05, 8, 2)
    key = jax.random.key(11)
    out, stats = fm.perturb(key, with_write_verify(variables, mask), 0.2)
    want = apply_variation(params, mask, key, 0.2, 0.05, 8, 2)
    jax.tree_util.tree_map(np.testing.assert_array_equal, out["params"], want)
    assert set(out) == {"params", "batch_stats"}  # the mask collection is consumed
    assert isinstance(stats, FaultStats)
    n = 6 * 7 + 3 * 3 * 2 * 4
    assert int(stats.n_cells) == n and int(stats.n_faults) == n - 3 * 7 and int(stats.n_zero_to_one) == 0
    np.testing.assert_allclose(float(stats.realised_ber), (n - 21) / n, rtol=1e-6)
    assert float(stats.zero_to_one_share) == 0.0
    # no collection: nothing verified, every kernel weight exposed to dev_var
    out0, stats0 = fm.perturb(key, variables, 0.2)
    jax.tree_util.tree_map(np.testing.assert_array_equal, out0["params"],
                           apply_variation(params, None, key, 0.2, 0.05, 8, 2))
    assert int(stats0.n_faults) == n and float(stats0.realised_ber) == 1.0


def test_cim_variation_rate_is_traced_one_program_for_a_sweep():
    params = _params(shape=(6, 7))
    variables = with_write_verify({"params": params}, _half_mask(params))
    fm = CiMVariation()
    f = jax.jit(lambda k, v, r: fm.perturb(k, v, r))
    key = jax.random.key(4)
    for dev_var in (0.0, 0.1, 0.3):
        out, _ = f(key, variables, jnp.float32(dev_var))
        want = apply_variation(params, variables["write_verify"], key, dev_var, 0.03)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                               out["params"], want)
    assert f._cache_size() == 1
    keys = jax.random.split(key, 4)  # vmap over trial keys equals the loop
    batched, bstats = jax.vmap(lambda k: fm.perturb(k, variables, 0.3))(keys)
    for j, k in enumerate(keys):
        one, _ = fm.perturb(k, variables, 0.3)
        np.testing.assert_allclose(batched["params"]["Dense_0"]["kernel"][j], one["params"]["Dense_0"]["kernel"],
                                   rtol=1e-6, atol=1e-7)
    assert bstats.n_faults.shape == (4,)


@pytest.mark.parametrize("config", [{"write_var": -0.1}, {"write_var": float("nan")}, {"write_var": "x"},
                                    {"n_bits": 8, "m_bits": 3}, {"n_bits": 0}, {"dev_var": 0.1}])
def test_cim_variation_bad_config(config):
    with pytest.raises(JaxfaultError):
        cim_variation(**config)


def test_cim_variation_bad_mask_and_rate():
    params = _params(shape=(2, 2))
    with pytest.raises(JaxfaultError):
        CiMVariation().perturb(jax.random.key(0), {"params": params, "write_verify": {"Dense_0": True}}, 0.1)
    with pytest.raises(JaxfaultError):
        CiMVariation().perturb(jax.random.key(0), {"params": params}, -0.1)
