"""SPEC 3.1 fault model: statistics, bit-exact stuck-at semantics, memory-array indexing, keys."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfault.errors import JaxfaultError
from jaxfault.neuralfuse.faults import (ARRAY_COLS, ARRAY_ROWS, STUCK0, STUCK1, apply_stuck_at, cell_codes,
                                        fault_masks, memory_array_codes, memory_array_index, perturb_kernel,
                                        perturb_params, perturb_variables)
from jaxfault.quant import dequantize, quantize


def popcount(x, bits):
    x = np.asarray(x).astype(np.int64)
    return sum(((x >> b) & 1) for b in range(bits))


def within_binomial(count, n, p, sds=5.0):
    """|count - n p| <= 5 standard deviations of Binomial(n, p) (two-sided miss chance < 1e-6)."""
    return abs(count - n * p) <= sds * math.sqrt(n * p * (1 - p)) + 1e-9


@pytest.mark.parametrize("ber,ber0,static,bits", [(0.01, 0.5, True, 8), (0.01, 0.2, True, 16), (0.05, 0.3, False, 4),
                                                  (0.002, 0.9, True, 8)])
def test_realised_fault_rate_and_stuck_at_one_share(ber, ber0, static, bits):
    n = 40000
    key = jax.random.PRNGKey(7)
    if static:
        m01, m10 = jax.jit(lambda k: fault_masks(k, n, ber, ber0, bits))(key)
    else:  # traced ber: the dense sampler
        m01, m10 = jax.jit(lambda k, b: fault_masks(k, n, b, ber0, bits))(key, jnp.float32(ber))
    m01, m10 = np.asarray(m01), np.asarray(m10)
    assert not np.any(m01 & m10), "a cell cannot be stuck at 1 and at 0"
    assert np.all((m01 | m10) < (1 << bits))
    cells = n * bits
    faulty = int(popcount(m01 | m10, bits).sum())
    ones = int(popcount(m01, bits).sum())
    assert within_binomial(faulty, cells, ber), (faulty, cells * ber)
    assert within_binomial(ones, faulty, ber0), (ones, faulty * ber0)
    for b in range(bits):  # every bit position is hit at the same rate (no off-by-one in the gaps)
        per_bit = int((((m01 | m10) >> b) & 1).sum())
        assert within_binomial(per_bit, n, ber), (b, per_bit)


def test_memory_array_fault_rate():
    codes = np.asarray(jax.jit(lambda k: memory_array_codes(k, 0.01, 0.5))(jax.random.PRNGKey(3)))
    assert codes.shape == (ARRAY_ROWS, ARRAY_COLS)
    faulty = int((codes != 0).sum())
    assert within_binomial(faulty, codes.size, 0.01)
    assert within_binomial(int((codes == STUCK1).sum()), faulty, 0.5)


def test_edge_rates():
    key = jax.random.PRNGKey(0)
    codes = jax.jit(cell_codes, static_argnums=(1, 2, 3))
    assert not np.any(np.asarray(codes(key, 1000, 0.0, 0.5)))
    assert np.all(np.asarray(codes(key, 1000, 1.0, 1.0)) == STUCK1)
    assert np.all(np.asarray(codes(key, 1000, 1.0, 0.0)) == STUCK0)


def _ref_stuck_at(q, m01, m10, bits):
    u = int(q) & ((1 << bits) - 1)
    u = (u & ~int(m10)) | int(m01)
    u &= (1 << bits) - 1
    return u - (1 << bits) if u >= 1 << (bits - 1) else u


@pytest.mark.parametrize("bits", [4, 8])
def test_apply_stuck_at_matches_python_bit_arithmetic(bits):
    rng = np.random.default_rng(0)
    qmax = 2 ** (bits - 1) - 1
    q = np.arange(-qmax, qmax + 1)
    q = np.repeat(q, 64)  # every representable value with many random mask pairs
    faulty = rng.integers(0, 1 << bits, q.size)
    m01 = faulty & rng.integers(0, 1 << bits, q.size)
    m10 = faulty & ~m01
    got = np.asarray(apply_stuck_at(jnp.asarray(q), jnp.asarray(m01), jnp.asarray(m10), bits))
    want = np.array([_ref_stuck_at(a, b, c, bits) for a, b, c in zip(q, m01, m10)])
    np.testing.assert_array_equal(got, want)
    assert got.min() >= -(1 << (bits - 1)) and got.max() <= qmax


def test_apply_stuck_at_16_bits_spot_values():
    q = jnp.array([-1, 0, 5, -32767, 32767])
    m01 = jnp.array([0, 1 << 15, 0, 0, 1 << 15])
    m10 = jnp.array([1 << 15, 0, 1, 1, 0])
    got = np.asarray(apply_stuck_at(q, m01, m10, 16))
    np.testing.assert_array_equal(got, [32767, -32768, 4, -32768, -1])


def test_perturb_kernel_is_quantize_fault_dequantize():
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 4, 8))
    key = jax.random.PRNGKey(2)
    got = jax.jit(lambda w, k: perturb_kernel(w, k, 0.05))(w, key)
    q, delta = quantize(w, 8)
    m01, m10 = jax.jit(lambda k: fault_masks(k, w.size, 0.05, 0.5, 8))(key)
    want = dequantize(apply_stuck_at(q.reshape(-1), m01, m10, 8).reshape(w.shape), delta)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # ber = 0 -> exactly the quantized model
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda w, k: perturb_kernel(w, k, 0.0))(w, key)), np.asarray(dequantize(q, delta)))


def test_memory_array_indexing_hand_checked():
    # SPEC 3.1: weight k -> row (k // 256) mod 8192, slot k mod 16, bit b -> column slot*8 + b
    k = jnp.array([0, 1, 15, 16, 17, 255, 256, 273, 8192 * 256, 8192 * 256 + 300])
    rows, cols = memory_array_index(k.size, 8, k)
    np.testing.assert_array_equal(np.asarray(rows[:, 0]), [0, 0, 0, 0, 0, 0, 1, 1, 0, 1])
    np.testing.assert_array_equal(np.asarray(cols[:, 0]), [0, 8, 120, 0, 8, 120, 0, 8, 0, 12 * 8])
    np.testing.assert_array_equal(np.asarray(cols[7]), np.arange(8, 16))
    # one stuck-at-1 cell at row 1, column 8 + 3 and one stuck-at-0 at row 0, column 0:
    codes = jnp.zeros((ARRAY_ROWS, ARRAY_COLS), jnp.int8).at[1, 11].set(STUCK1).at[0, 0].set(STUCK0)
    m01, m10 = jax.jit(lambda c: fault_masks(None, 600, 0.0, 0.5, 8, "memory_array", array_codes=c))(codes)
    m01, m10 = np.asarray(m01), np.asarray(m10)
    hit1 = np.nonzero(m01)[0]
    np.testing.assert_array_equal(hit1, [256 + 16 * j + 1 for j in range(16)])  # row pattern repeated 16x
    assert set(m01[hit1]) == {8}
    np.testing.assert_array_equal(np.nonzero(m10)[0], [16 * j for j in range(16)])
    assert set(m10[np.nonzero(m10)[0]]) == {1}


def test_memory_array_map_shared_across_layers_independent_not():
    w = jax.random.normal(jax.random.PRNGKey(4), (64, 64))
    params = {"a": {"kernel": w}, "b": {"kernel": w}}
    key = jax.random.PRNGKey(5)
    shared = jax.jit(lambda p, k: perturb_params(p, k, 0.05, placement="memory_array"))(params, key)
    np.testing.assert_array_equal(np.asarray(shared["a"]["kernel"]), np.asarray(shared["b"]["kernel"]))
    indep = jax.jit(lambda p, k: perturb_params(p, k, 0.05))(params, key)
    assert np.any(np.asarray(indep["a"]["kernel"]) != np.asarray(indep["b"]["kernel"]))


def test_same_key_same_model_vmap_equals_loop_and_only_kernels_change():
    params = {"conv": {"kernel": jax.random.normal(jax.random.PRNGKey(0), (3, 3, 2, 4)), "bias": jnp.ones(4)},
              "dense": {"kernel": jax.random.normal(jax.random.PRNGKey(1), (32, 10)), "bias": jnp.zeros(10)}}
    f = jax.jit(lambda k: perturb_params(params, k, 0.02))
    keys = jax.random.split(jax.random.PRNGKey(9), 4)
    a, b = f(keys[0]), f(keys[0])
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert np.any(np.asarray(f(keys[1])["dense"]["kernel"]) != np.asarray(a["dense"]["kernel"]))
    batched = jax.jit(jax.vmap(f))(keys)
    for i, k in enumerate(keys):
        one = f(k)
        for x, y in zip(jax.tree_util.tree_leaves(batched), jax.tree_util.tree_leaves(one)):
            np.testing.assert_array_equal(np.asarray(x[i]), np.asarray(y))
    np.testing.assert_array_equal(np.asarray(a["conv"]["bias"]), np.ones(4))
    v = jax.jit(lambda v, k: perturb_variables(v, k, 0.02))({"params": params, "batch_stats": {"m": jnp.ones(2)}}, keys[0])
    np.testing.assert_array_equal(np.asarray(v["params"]["dense"]["kernel"]), np.asarray(a["dense"]["kernel"]))
    assert "batch_stats" in v


def test_straight_through_gradient_is_identity_and_value_exact():
    w = jax.random.normal(jax.random.PRNGKey(0), (16, 8))
    key = jax.random.PRNGKey(1)
    g = jax.jit(jax.grad(lambda w: jnp.sum(perturb_kernel(w, key, 0.1) * 3.0)))(w)
    np.testing.assert_allclose(np.asarray(g), 3.0)
    pk = jax.jit(perturb_kernel, static_argnames=("ber", "straight_through"))
    np.testing.assert_array_equal(np.asarray(pk(w, key, ber=0.1)),
                                  np.asarray(pk(w, key, ber=0.1, straight_through=False)))


@pytest.mark.parametrize("kwargs,match", [({"ber": -0.1}, "ber"), ({"ber": 1.5}, "ber"), ({"ber": float("nan")}, "ber"),
                                          ({"ber0": 2.0}, "ber0"), ({"bits": 3}, "precision"),
                                          ({"bits": 32}, "precision"), ({"placement": "rows"}, "placement")])
def test_bad_input_raises(kwargs, match):
    params = {"d": {"kernel": jnp.ones((4, 4))}}
    args = {"ber": 0.01, **kwargs}
    with pytest.raises(JaxfaultError, match=match):
        perturb_params(params, jax.random.PRNGKey(0), **args)
