"""SRAM bit errors on quantized weights: statistics, bit-exact stuck-at semantics, memory-array
indexing (Flax and PyTorch orders, 4-bit compat), replay, keys, the SRAMBitErrors fault model.

Tolerances: fault counts are Binomial(n, p); every check allows 5 standard deviations (a false
alarm probability below 1e-6 per check) and the seeds are fixed, so the tests are deterministic.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfault import faults as F
from jaxfault.core.errors import JaxfaultError
from jaxfault.neuralfuse import apply_reference_map, sram_bit_errors
from jaxfault.neuralfuse.faults import (ARRAY_COLS, ARRAY_ROWS, STUCK0, STUCK1, SRAMBitErrors, fault_masks,
                                        memory_array_codes, memory_array_index, perturb_kernel, perturb_params,
                                        perturb_variables, sign_extend, to_unsigned)
from jaxfault.core.quant import dequantize, quantize


def popcount(x, bits):
    x = np.asarray(x).astype(np.int64)
    return sum(((x >> b) & 1) for b in range(bits))


def within_binomial(count, n, p, sds=5.0):
    """|count - n p| <= 5 standard deviations of Binomial(n, p) (two-sided miss chance < 1e-6)."""
    return abs(count - n * p) <= sds * math.sqrt(n * p * (1 - p)) + 1e-9


def leaves_equal(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("ber,ber0,traced,bits", [(0.01, 0.5, False, 8), (0.01, 0.2, False, 16), (0.05, 0.3, True, 4),
                                                  (0.002, 0.9, False, 8), (0.02, 0.5, True, 8)])
def test_realised_fault_rate_and_stuck_at_one_share(ber, ber0, traced, bits):
    n = 40000
    key = jax.random.key(7)
    if traced:   # rate traced inside one compiled program, chunks sized from rate_bound
        m10, m01 = jax.jit(lambda k, b: fault_masks(k, n, b, ber0, bits, rate_bound=0.05))(key, jnp.float32(ber))
    else:
        m10, m01 = jax.jit(lambda k: fault_masks(k, n, ber, ber0, bits))(key)
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


def test_memory_array_fault_rate_and_same_cells_as_maps():
    key = jax.random.key(3)
    codes = np.asarray(jax.jit(lambda k: memory_array_codes(k, 0.01, 0.5))(key))
    assert codes.shape == (ARRAY_ROWS, ARRAY_COLS)
    faulty = int((codes != 0).sum())
    assert within_binomial(faulty, codes.size, 0.01)
    assert within_binomial(int((codes == STUCK1).sum()), faulty, 0.5)
    m10, m01, st = F.memory_array_maps(key, 0.01, 0.5)       # the array is drawn with the one sampler
    assert int(st.n_faults) == faulty and int(st.n_cells) == ARRAY_ROWS * ARRAY_COLS
    np.testing.assert_array_equal(np.asarray(F.unpack_cells(m01)), codes == STUCK1)
    np.testing.assert_array_equal(np.asarray(F.unpack_cells(m10)), codes == STUCK0)


def test_edge_rates():
    key = jax.random.key(0)
    m10, m01 = fault_masks(key, 1000, 0.0, 0.5)
    assert not np.any(np.asarray(m10) | np.asarray(m01))
    m10, m01 = fault_masks(key, 1000, 1.0, 1.0)
    assert np.all(np.asarray(m01) == 0xFF) and not np.any(np.asarray(m10))
    m10, m01 = fault_masks(key, 1000, 1.0, 0.0, bits=4)
    assert np.all(np.asarray(m10) == 0xF) and not np.any(np.asarray(m01))


def _ref_stuck_at(q, m10, m01, bits):
    u = int(q) & ((1 << bits) - 1)
    u = (u & ~int(m10)) | int(m01)
    u &= (1 << bits) - 1
    return u - (1 << bits) if u >= 1 << (bits - 1) else u


@pytest.mark.parametrize("bits", [4, 8])
def test_int_stuck_at_matches_python_bit_arithmetic(bits):
    rng = np.random.default_rng(0)
    qmax = 2 ** (bits - 1) - 1
    q = np.repeat(np.arange(-qmax, qmax + 1), 64)  # every representable value with many random mask pairs
    faulty = rng.integers(0, 1 << bits, q.size)
    m01 = faulty & rng.integers(0, 1 << bits, q.size)
    m10 = faulty & ~m01
    got = np.asarray(F.apply_stuck_at_int(jnp.asarray(q), jnp.asarray(m10), jnp.asarray(m01), bits))
    want = np.array([_ref_stuck_at(a, b, c, bits) for a, b, c in zip(q, m10, m01)])
    np.testing.assert_array_equal(got, want)
    assert got.min() >= -(1 << (bits - 1)) and got.max() <= qmax
    np.testing.assert_array_equal(np.asarray(sign_extend(to_unsigned(jnp.asarray(q), bits), bits)), q)


def test_int_stuck_at_16_bits_spot_values():
    q = jnp.array([-1, 0, 5, -32767, 32767])
    m01 = jnp.array([0, 1 << 15, 0, 0, 1 << 15])
    m10 = jnp.array([1 << 15, 0, 1, 1, 0])
    got = np.asarray(F.apply_stuck_at_int(q, m10, m01, 16))
    np.testing.assert_array_equal(got, [32767, -32768, 4, -32768, -1])


@pytest.mark.parametrize("layout", ["torch", "flax", None])
def test_perturb_kernel_is_quantize_fault_dequantize(layout):
    """Word k of the masks hits weight k in the layout's order: PyTorch's OIHW flatten or the
    Flax kernel's HWIO flatten (the independent placement's default, layout None)."""
    w = jax.random.normal(jax.random.key(1), (3, 3, 4, 8))
    key = jax.random.key(2)
    opts = {} if layout is None else {"layout": layout}
    got = jax.jit(lambda w, k: perturb_kernel(w, k, 0.05, **opts))(w, key)
    q, delta = quantize(w, 8)
    m10, m01 = jax.jit(lambda k: fault_masks(k, w.size, 0.05, 0.5, 8))(key)
    if layout in ("flax", None):
        faulty_q = F.apply_stuck_at_int(q.reshape(-1), m10, m01, 8).reshape(w.shape)
    else:  # HWIO -> OIHW, flatten, fault, back
        q_torch = jnp.transpose(q, (3, 2, 0, 1))
        faulty_q = jnp.transpose(F.apply_stuck_at_int(q_torch.reshape(-1), m10, m01, 8).reshape(q_torch.shape),
                                 (2, 3, 1, 0))
    want = dequantize(faulty_q, delta)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # ber = 0 -> exactly the quantized model
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda w, k: perturb_kernel(w, k, 0.0, **opts))(w, key)),
                                  np.asarray(dequantize(q, delta)))


def test_memory_array_indexing_hand_checked():
    # weight k -> row (k // 256) mod 8192, slot k mod 16, bit b -> column slot*8 + b
    k = jnp.array([0, 1, 15, 16, 17, 255, 256, 273, 8192 * 256, 8192 * 256 + 300])
    rows, cols = memory_array_index(k.size, 8, k)
    np.testing.assert_array_equal(np.asarray(rows[:, 0]), [0, 0, 0, 0, 0, 0, 1, 1, 0, 1])
    np.testing.assert_array_equal(np.asarray(cols[:, 0]), [0, 8, 120, 0, 8, 120, 0, 8, 0, 12 * 8])
    np.testing.assert_array_equal(np.asarray(cols[7]), np.arange(8, 16))
    # 4-bit: W = 32 words per row; default period 16 W = 512, compat period W * W = 1024
    k4 = jnp.array([0, 31, 32, 511, 512, 1023, 1024])
    np.testing.assert_array_equal(np.asarray(memory_array_index(7, 4, k4)[0][:, 0]), [0, 0, 0, 0, 1, 1, 2])
    np.testing.assert_array_equal(np.asarray(memory_array_index(7, 4, k4, compat=True)[0][:, 0]),
                                  [0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(np.asarray(memory_array_index(7, 4, k4)[1][:, 0]), [0, 124, 0, 124, 0, 124, 0])
    # one stuck-at-1 cell at row 1, column 8 + 3 and one stuck-at-0 at row 0, column 0:
    codes = jnp.zeros((ARRAY_ROWS, ARRAY_COLS), jnp.int8).at[1, 11].set(STUCK1).at[0, 0].set(STUCK0)
    m10, m01 = jax.jit(lambda c: fault_masks(None, 600, 0.0, 0.5, 8, "memory_array", array_codes=c))(codes)
    m01, m10 = np.asarray(m01), np.asarray(m10)
    hit1 = np.nonzero(m01)[0]
    np.testing.assert_array_equal(hit1, [256 + 16 * j + 1 for j in range(16)])  # row pattern repeated 16x
    assert set(m01[hit1]) == {8}
    np.testing.assert_array_equal(np.nonzero(m10)[0], [16 * j for j in range(16)])
    assert set(m10[np.nonzero(m10)[0]]) == {1}


def test_memory_array_map_shared_across_layers_independent_not():
    """Memory array: two identical layers get identical faults. Independent placement: the faulty
    cells of two layers coincide only by chance, Binomial(cells, p^2) (independence)."""
    w = jax.random.normal(jax.random.key(4), (64, 64))
    params = {"a": {"kernel": w}, "b": {"kernel": w}}
    key = jax.random.key(5)
    shared = jax.jit(lambda p, k: perturb_params(p, k, 0.05, placement="memory_array"))(params, key)
    np.testing.assert_array_equal(np.asarray(shared["a"]["kernel"]), np.asarray(shared["b"]["kernel"]))
    indep = jax.jit(lambda p, k: perturb_params(p, k, 0.05))(params, key)
    assert np.any(np.asarray(indep["a"]["kernel"]) != np.asarray(indep["b"]["kernel"]))
    n, p = 64 * 64, 0.05
    ma = np.asarray(jnp.bitwise_or(*fault_masks(jax.random.fold_in(key, 0), n, p)))
    mb = np.asarray(jnp.bitwise_or(*fault_masks(jax.random.fold_in(key, 1), n, p)))
    both = int(popcount(ma & mb, 8).sum())
    assert within_binomial(both, n * 8, p * p), (both, n * 8 * p * p)


@pytest.mark.parametrize("bits,layout,compat", [pytest.param(8, "flax", False, marks=pytest.mark.slow), (4, "torch", True),
                                              (16, "torch", False)])
def test_independent_placement_is_per_kernel_draws_in_one_loop(bits, layout, compat):
    """The independent placement draws all kernels in one sampler loop (one compiled sampler per
    model), with exactly the faults of kernel i drawn alone from fold_in(key, i)."""
    params = {"c": {"kernel": jax.random.normal(jax.random.key(0), (3, 3, 2, 8)), "bias": jnp.ones(8)},
              "d": {"kernel": jax.random.normal(jax.random.key(1), (72, 5))},
              "e": {"kernel": jax.random.normal(jax.random.key(2), (1, 3))}}
    key = jax.random.key(7)
    out = perturb_params(params, key, 0.03, 0.5, bits, layout=layout, compat=compat, straight_through=False)
    for i, name in enumerate(("c", "d", "e")):
        alone = perturb_kernel(params[name]["kernel"], jax.random.fold_in(key, i), 0.03, 0.5, bits,
                               straight_through=False, layout=layout, compat=compat)
        np.testing.assert_array_equal(np.asarray(out[name]["kernel"]), np.asarray(alone))
    assert np.any(np.asarray(out["d"]["kernel"]) != np.asarray(perturb_kernel(params["d"]["kernel"], key, 0.03, 0.5,
                                                                               bits, straight_through=False)))


def test_same_key_same_model_vmap_equals_loop_and_only_kernels_change():
    params = {"conv": {"kernel": jax.random.normal(jax.random.key(0), (3, 3, 2, 4)), "bias": jnp.ones(4)},
              "dense": {"kernel": jax.random.normal(jax.random.key(1), (32, 10)), "bias": jnp.zeros(10)}}
    f = jax.jit(lambda k: perturb_params(params, k, 0.02))
    keys = jax.random.split(jax.random.key(9), 4)
    a, b = f(keys[0]), f(keys[0])
    leaves_equal(a, b)
    assert np.any(np.asarray(f(keys[1])["dense"]["kernel"]) != np.asarray(a["dense"]["kernel"]))
    batched = jax.jit(jax.vmap(f))(keys)
    for i, k in enumerate(keys):
        leaves_equal(jax.tree_util.tree_map(lambda x: x[i], batched), f(k))
    np.testing.assert_array_equal(np.asarray(a["conv"]["bias"]), np.ones(4))
    v = jax.jit(lambda v, k: perturb_variables(v, k, 0.02))({"params": params, "batch_stats": {"m": jnp.ones(2)}},
                                                          keys[0])
    np.testing.assert_array_equal(np.asarray(v["params"]["dense"]["kernel"]), np.asarray(a["dense"]["kernel"]))
    assert "batch_stats" in v


def test_straight_through_gradient_is_identity_and_value_exact():
    w = jax.random.normal(jax.random.key(0), (16, 8))
    key = jax.random.key(1)
    g = jax.jit(jax.grad(lambda w: jnp.sum(perturb_kernel(w, key, 0.1) * 3.0)))(w)
    np.testing.assert_allclose(np.asarray(g), 3.0)
    pk = jax.jit(perturb_kernel, static_argnames=("ber", "straight_through"))
    np.testing.assert_array_equal(np.asarray(pk(w, key, ber=0.1)),
                                  np.asarray(pk(w, key, ber=0.1, straight_through=False)))
    # traced ber (EOPM at several BERs in one program): same value, same identity gradient
    params = {"d": {"kernel": w}}
    gt = jax.jit(jax.grad(lambda p, b: jnp.sum(perturb_params(p, key, b, rate_bound=0.2)["d"]["kernel"] * 3.0)))(
        params, jnp.float32(0.1))
    np.testing.assert_allclose(np.asarray(gt["d"]["kernel"]), 3.0)


@pytest.mark.parametrize("placement", ["independent", "memory_array"])
def test_traced_ber_equals_static_ber(placement):
    params = {"c": {"kernel": jax.random.normal(jax.random.key(0), (3, 3, 8, 16))},
              "d": {"kernel": jax.random.normal(jax.random.key(1), (144, 10)), "bias": jnp.ones(10)}}
    key = jax.random.key(2)
    static = jax.jit(lambda k: perturb_params(params, k, 0.01, placement=placement))(key)
    traced = jax.jit(lambda k, b: perturb_params(params, k, b, placement=placement, rate_bound=0.05))(
        key, jnp.float32(0.01))
    leaves_equal(static, traced)
    assert np.any(np.asarray(static["c"]["kernel"]) != np.asarray(perturb_params(params, key, 0.0)["c"]["kernel"]))


# ------------------------------------------------------------------ PyTorch order, replay, compat
def _ref_replay(q_torch_flat, s1, s0, bits, compat):
    """numpy transcription of the reference's replay on weights in its own (PyTorch) order."""
    per_row = 128 // bits
    period = per_row * per_row if compat else 16 * per_row
    k = np.arange(q_torch_flat.size)
    row, slot = (k // period) % 8192, k % per_row
    m1 = np.zeros(k.size, np.int64)
    m0 = np.zeros(k.size, np.int64)
    for b in range(bits):
        m1 |= s1[row, slot * bits + b].astype(np.int64) << b
        m0 |= s0[row, slot * bits + b].astype(np.int64) << b
    width = 8 if (compat and bits < 8) else bits           # compat: the 4-bit word lives in an int8
    u = q_torch_flat.astype(np.int64) & ((1 << width) - 1)
    u = (u & ~m0) | m1
    return np.where(u >= 1 << (width - 1), u - (1 << width), u)


@pytest.mark.parametrize("bits,compat", [(8, False), (4, False), (4, True), (16, False)])
def test_reference_map_replay_in_torch_order(bits, compat):
    rng = np.random.default_rng(bits + compat)
    s1 = (rng.random((8192, 128)) < 0.02).astype(np.uint8)
    s0 = (rng.random((8192, 128)) < 0.02).astype(np.uint8)
    qmax = 2 ** (bits - 1) - 1
    conv = rng.integers(-qmax, qmax + 1, (3, 3, 64, 120))        # Flax HWIO, 69,120 weights
    dense = rng.integers(-qmax, qmax + 1, (300, 10))              # Flax (in, out)
    for q, perm in ((conv, (3, 2, 0, 1)), (dense, (1, 0))):
        got, st = apply_reference_map(jnp.asarray(q), s1, s0, bits, layout="torch", compat=compat)
        want = _ref_replay(q.transpose(perm).reshape(-1), s1, s0, bits, compat)
        np.testing.assert_array_equal(np.asarray(got).transpose(perm).reshape(-1), want)
        assert int(st.n_cells) == q.size * bits and int(st.n_faults) > 0
        flax = np.asarray(apply_reference_map(jnp.asarray(q), s1, s0, bits, layout="flax", compat=compat)[0])
        np.testing.assert_array_equal(flax.reshape(-1), _ref_replay(q.reshape(-1), s1, s0, bits, compat))
        assert np.any(flax != np.asarray(got))                   # the two orders hit other weights
    if bits == 4:
        got = np.asarray(apply_reference_map(jnp.asarray(conv), s1, s0, 4, compat=compat)[0])
        assert got.min() >= (-16 if compat else -8) and got.max() <= (15 if compat else 7)
        assert np.any((got < -8) | (got > 7)) == compat


def test_torch_order_and_4_bit_compat_hand_checked():
    s1 = np.zeros((8192, 128), np.uint8)
    s0 = np.zeros((8192, 128), np.uint8)
    s1[0, 1 * 8 + 3] = 1     # 8-bit: torch weight 1, bit 3
    q = np.zeros((2, 2, 3, 5), np.int32)                       # HWIO; torch OIHW (5, 3, 2, 2)
    got = np.asarray(apply_reference_map(jnp.asarray(q), s1, s0, 8)[0])
    # torch flat index 1 = (o=0, i=0, h=0, w=1) -> Flax (h=0, w=1, i=0, o=0); 16 words later,
    # index 17 = 12 o + 4 i + 2 h + w = (o=1, i=1, h=0, w=1) -> Flax (0, 1, 1, 1)
    hits = sorted(map(tuple, np.argwhere(got)))
    assert (0, 1, 0, 0) in hits and (0, 1, 1, 1) in hits and set(got[got != 0]) == {8}
    assert len(hits) == 60 // 16 + (60 % 16 > 1)
    # 4-bit: q = 5 with bit 3 stuck at 1 reads 13 in the int8 container (compat), -3 sign-extended
    s1 = np.zeros((8192, 128), np.uint8)
    s1[0, 3] = 1
    s0 = np.zeros((8192, 128), np.uint8)
    s0[0, 4 + 3] = 1
    q = jnp.array([[5], [-3]], jnp.int32)                     # dense (in=2, out=1): torch order = same
    np.testing.assert_array_equal(np.asarray(apply_reference_map(q, s1, s0, 4, compat=True)[0]).ravel(), [13, -11])
    np.testing.assert_array_equal(np.asarray(apply_reference_map(q, s1, s0, 4)[0]).ravel(), [-3, 5])


@pytest.mark.parametrize("layout", ["flax", "torch"])
def test_memory_array_placement_is_replay_of_its_own_map(layout):
    w = jax.random.normal(jax.random.key(6), (3, 3, 16, 32))
    key = jax.random.key(8)
    got = perturb_params({"c": {"kernel": w}}, key, 0.02, placement="memory_array", layout=layout)["c"]["kernel"]
    codes = np.asarray(memory_array_codes(key, 0.02))
    q, delta = quantize(w, 8)
    qf, _ = apply_reference_map(q, codes == STUCK1, codes == STUCK0, 8, layout=layout)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(dequantize(qf, delta)))


# ------------------------------------------------------------------------------- fault model
def _model_and_variables():
    params = {"c": {"kernel": jax.random.normal(jax.random.key(0), (3, 3, 16, 32)), "bias": jnp.ones(32)},
              "d": {"kernel": jax.random.normal(jax.random.key(1), (512, 10))}}
    return {"params": params, "batch_stats": {"m": jnp.arange(3.0)}}


@pytest.mark.parametrize("config", [{}, {"bits": 4, "ber0": 0.2, "placement": "memory_array", "layout": "torch"},
                                    {"bits": 16, "compat": True}])
def test_sram_fault_model_perturb(config):
    variables = _model_and_variables()
    model = sram_bit_errors(rate_bound=0.05, **config)
    bits, ber0 = model.bits, model.ber0
    key = jax.random.key(3)
    prepared = model.prepare(variables)
    out, st = jax.jit(model.perturb)(key, prepared, jnp.float32(0.02))
    # a Python rate: a constant while tracing (jit with the rate static, rather than op-by-op eager
    # execution of the sampler's while_loop, which is slow and computes the same thing)
    static = jax.jit(model.perturb, static_argnums=2)
    out_static, st_static = static(key, prepared, 0.02)
    leaves_equal((out, st), (out_static, st_static))
    direct = jax.jit(lambda k, p: perturb_params(p, k, 0.02, ber0, bits, model.placement, straight_through=False,
                                                 layout=model.layout, compat=model.compat))(key, prepared["params"])
    leaves_equal(out["params"], direct)
    np.testing.assert_array_equal(np.asarray(out["batch_stats"]["m"]), [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(np.asarray(out["params"]["c"]["bias"]), np.ones(32))
    n_cells = bits * (3 * 3 * 16 * 32 + 512 * 10)
    assert int(st.n_cells) == n_cells
    if model.placement == "independent":
        assert within_binomial(int(st.n_faults), n_cells, 0.02)
        assert within_binomial(int(st.n_zero_to_one), int(st.n_faults), ber0)
    assert float(st.realised_ber) == pytest.approx(int(st.n_faults) / n_cells, rel=1e-6)
    clean, st0 = static(key, prepared, 0.0)                       # ber 0: the prepared (clean quantized) model
    leaves_equal(clean, prepared)
    assert int(st0.n_faults) == 0


def test_sram_fault_model_sweep_in_one_program_and_keys():
    """vmap over rates (one compiled sweep) equals a loop of static rates; vmap over keys equals a loop."""
    variables = _model_and_variables()
    model = sram_bit_errors(rate_bound=0.05)
    key = jax.random.key(4)
    bers = jnp.array([0.0, 0.005, 0.02, 0.05], jnp.float32)
    sweep = jax.jit(jax.vmap(lambda b: model.perturb(key, variables, b)))(bers)
    for i, b in enumerate([0.0, 0.005, 0.02, 0.05]):
        leaves_equal(jax.tree_util.tree_map(lambda x: x[i], sweep), model.perturb(key, variables, b))
    n_cells = 8 * (3 * 3 * 16 * 32 + 512 * 10)
    for i, b in enumerate([0.005, 0.02, 0.05], start=1):
        assert within_binomial(int(sweep[1].n_faults[i]), n_cells, b)
    keys = jax.random.split(key, 3)
    batched = jax.jit(jax.vmap(lambda k: model.perturb(k, variables, jnp.float32(0.01))))(keys)
    for i, k in enumerate(keys):
        leaves_equal(jax.tree_util.tree_map(lambda x: x[i], batched), model.perturb(k, variables, 0.01))


@pytest.mark.parametrize("config,match", [({"bits": 3}, "precision"), ({"bits": "8"}, "bits"),
                                          ({"ber0": 1.5}, "ber0"), ({"placement": "rows"}, "placement"),
                                          ({"layout": "nchw"}, "layout"), ({"compat": "yes"}, "compat"),
                                          ({"rate_bound": -1}, "rate_bound"), ({"rate_bound": 2}, "rate_bound"),
                                          ({"seed": 1}, "seed")])
def test_sram_fault_model_bad_config_named(config, match):
    with pytest.raises(JaxfaultError, match=match):
        sram_bit_errors(**config)


def test_sram_fault_model_rate_checks():
    variables = _model_and_variables()
    model = SRAMBitErrors(rate_bound=0.01)
    assert model.rate_name == "ber" and hash(model) == hash(SRAMBitErrors(rate_bound=0.01))
    with pytest.raises(JaxfaultError, match="exceeds rate_bound"):
        model.perturb(jax.random.key(0), variables, 0.02)
    with pytest.raises(JaxfaultError, match="ber"):
        model.perturb(jax.random.key(0), variables, -0.1)
    with pytest.raises(JaxfaultError, match="rate_bound"):                # traced ber without a bound
        jax.jit(lambda b: perturb_params(variables["params"], jax.random.key(0), b))(jnp.float32(0.01))


@pytest.mark.parametrize("kwargs,match", [({"ber": -0.1}, "ber"), ({"ber": 1.5}, "ber"), ({"ber": float("nan")}, "ber"),
                                          ({"ber0": 2.0}, "ber0"), ({"bits": 3}, "precision"),
                                          ({"bits": 32}, "precision"), ({"placement": "rows"}, "placement"),
                                          ({"layout": "oihw"}, "layout"), ({"ber": 0.1, "rate_bound": 0.05}, "rate_bound")])
def test_bad_input_raises(kwargs, match):
    params = {"d": {"kernel": jnp.ones((4, 4))}}
    args = {"ber": 0.01, **kwargs}
    with pytest.raises(JaxfaultError, match=match):
        perturb_params(params, jax.random.key(0), **args)


def test_default_weight_order_follows_the_placement():
    """The memory array defaults to PyTorch's order (the reference's storage order, which decides
    which weights share a row pattern); independent faults to Flax's (order is immaterial there)."""
    from jaxfault.neuralfuse.faults import resolve_layout

    assert SRAMBitErrors(placement="memory_array").layout == "torch"
    assert SRAMBitErrors().layout == "flax"
    assert SRAMBitErrors(placement="memory_array", layout="flax").layout == "flax"
    assert resolve_layout(None, "memory_array") == "torch" and resolve_layout("torch", "independent") == "torch"
    w = {"Conv_0": {"kernel": jax.random.normal(jax.random.key(0), (5, 5, 3, 16))}}
    key = jax.random.key(4)
    default = perturb_params(w, key, 0.05, placement="memory_array")
    torch = perturb_params(w, key, 0.05, placement="memory_array", layout="torch")
    flax = perturb_params(w, key, 0.05, placement="memory_array", layout="flax")
    np.testing.assert_array_equal(np.asarray(default["Conv_0"]["kernel"]), np.asarray(torch["Conv_0"]["kernel"]))
    assert np.any(np.asarray(default["Conv_0"]["kernel"]) != np.asarray(flax["Conv_0"]["kernel"]))
    with pytest.raises(JaxfaultError, match="layout"):
        SRAMBitErrors(layout="tf")
