"""Fault maps: exact Bernoulli(BER) cells only over stored bits, 0->1 share, keys, replay.

Tolerances: counts are Binomial(n, p); every check allows 5 standard deviations (a false alarm
probability below 1e-6 per check), and the seeds are fixed, so the tests are deterministic.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfault import faults
from jaxfault.faults import sampler, words
from jaxfault.core.errors import JaxfaultError

MASK18 = 0xFFFFC000


def within(count, n, p, sds=5.0):
    sd = math.sqrt(n * p * (1 - p))
    return abs(count - n * p) <= sds * sd + 1e-9, (count, n * p, sd)


N = 40_000      # one word count for all tests: the jitted samplers compile once per configuration


@pytest.mark.parametrize("ber,q", [(1e-2, 0.2), (0.05, 0.3)])
def test_realised_ber_and_zero_to_one_share(ber, q):
    n = N
    m10, m01, st = faults.stuck_at_maps(jax.random.key(1), n, ber, q, MASK18)
    m10, m01 = np.asarray(m10), np.asarray(m01)
    assert not np.any((m10 | m01) & ~np.uint32(MASK18))           # only stored cells
    assert not np.any(m10 & m01)                                   # a cell has one fault type
    nf = int(np.unpackbits((m10 | m01).view(np.uint8)).sum())
    n01 = int(np.unpackbits(m01.view(np.uint8)).sum())
    assert nf == int(st.n_faults) and n01 == int(st.n_zero_to_one)
    cells = n * 18
    ok, info = within(nf, cells, ber)
    assert ok, info
    ok, info = within(n01, nf, q)
    assert ok, info
    assert float(st.realised_ber) == pytest.approx(nf / cells, rel=1e-6)
    assert float(st.zero_to_one_share) == pytest.approx(n01 / nf, rel=1e-6)


def test_cells_are_iid_bernoulli():
    """Per-word fault counts follow Binomial(18, p) (chi-square), every stored bit position is hit
    equally often, and back-to-back faults occur at rate p (the geometric gap law at gap 0)."""
    n, p = N, 0.05
    m10, m01, _ = faults.stuck_at_maps(jax.random.key(1), n, p, 0.3, MASK18)
    m = np.asarray(m10) | np.asarray(m01)
    per_bit = np.array([((m >> b) & 1) for b in range(14, 32)])          # (18, n)
    counts = per_bit.sum(0)
    pmf = np.array([math.comb(18, k) * p ** k * (1 - p) ** (18 - k) for k in range(19)])
    obs = np.bincount(counts, minlength=19)
    keep = pmf * n >= 5
    exp_ = np.append(pmf[keep] * n, pmf[~keep].sum() * n)
    obs_ = np.append(obs[keep], obs[~keep].sum())
    chi2 = float(((obs_ - exp_) ** 2 / exp_).sum())
    df = len(exp_) - 1
    assert chi2 < df + 6 * math.sqrt(2 * df), (chi2, df)
    for row in per_bit:                                                   # each position ~ Bin(n, p)
        ok, info = within(int(row.sum()), n, p)
        assert ok, info
    flat = per_bit[::-1].T.reshape(-1)                                    # cell order MSB first
    both = int(np.sum(flat[1:] & flat[:-1]))
    ok, info = within(both, flat.size - 1, p * p)
    assert ok, info


def test_small_ber_across_keys_and_chunk_continuation():
    """Tiny BER: the total over many keys is Binomial; with one block of faults per loop iteration
    the while loop must continue exactly (the very same faults as with one big chunk), and
    segments split the cells without losing any."""
    n, p, T = 5_000, 2e-4, 64
    keys = jax.random.split(jax.random.key(3), T)
    counts = jax.vmap(lambda k: faults.stuck_at_maps(k, n, p, 0.0, MASK18)[2].n_faults)(keys)
    ok, info = within(int(counts.sum()), T * n * 18, p)
    assert ok, info
    p32, q32 = jnp.float32(1e-2), jnp.float32(0.0)
    big = words._maps(jax.random.key(4), p32, q32, n_words=n, stored_mask=MASK18, rate_bound=1e-2)
    small = words._maps(jax.random.key(4), p32, q32, n_words=n, stored_mask=MASK18, rate_bound=1e-2,
                        chunk_cap=sampler.BLOCK)
    assert sampler.chunk_blocks(n * 18, 1e-2) > 1 == sampler.chunk_blocks(n * 18, 1e-2, sampler.BLOCK)
    for a, b in zip(big[:2], small[:2]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(big[2].n_faults) == int(small[2].n_faults) > 18 * n * 1e-2 / 2  # ~7 loop iterations of 128
    m10, _, st = words._maps(jax.random.key(4), p32, q32, n_words=n, stored_mask=MASK18, rate_bound=1e-2,
                             chunk_cap=sampler.BLOCK, segment_cells=18 * 2000 + 5)
    nf = int(np.unpackbits(np.asarray(m10).view(np.uint8)).sum())
    assert nf == int(st.n_faults)
    ok, info = within(nf, n * 18, 1e-2)
    assert ok, info
    per_seg = np.add.reduceat(np.asarray(m10) != 0, np.arange(0, n, 2000))
    assert np.all(per_seg > 0)


def test_many_arrays_in_one_loop_equal_one_loop_per_array():
    """inject_stuck_at_each (one sampler loop for several arrays, as a model's kernels use) gives
    each array exactly the faults of its own inject_stuck_at, whatever the chunking and segments;
    its stats are the sum; one compiled loop, not one per array."""
    sizes = (3000, 7, 1, 1200)
    ws = [jax.random.bits(jax.random.key(20 + i), (n,), jnp.uint32) for i, n in enumerate(sizes)]
    ks = [jax.random.key(30 + i) for i in range(len(sizes))]
    each, st = faults.inject_stuck_at_each(ks, ws, 0.02, 0.3, MASK18)
    alone = [faults.inject_stuck_at(k, w, 0.02, 0.3, MASK18) for k, w in zip(ks, ws)]
    for a, (b, _) in zip(each, alone):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(st.n_faults) == sum(int(s.n_faults) for _, s in alone) > 0
    assert int(st.n_zero_to_one) == sum(int(s.n_zero_to_one) for _, s in alone)
    assert float(st.n_cells) == 18 * sum(sizes)
    key_array = jnp.stack(ks)  # a key array works like a list of keys
    p32, q32 = jnp.float32(0.02), jnp.float32(0.3)
    for cap, seg in ((sampler.BLOCK, 18 * 500 + 5),):  # small chunks, several segments per array
        out, nf, _ = words._inject_each(key_array, ws, p32, q32, stored_mask=MASK18, flip=False, rate_bound=0.02,
                                        chunk_cap=cap,
                                        segment_cells=seg)
        ref = [words._inject(k, w, p32, q32, stored_mask=MASK18, flip=False, rate_bound=0.02, segment_cells=seg)
               for k, w in zip(ks, ws)]
        for a, (b, _) in zip(out, ref):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert int(nf) == sum(int(s.n_faults) for _, s in ref)
    assert sampler.stream_chunk_blocks([18 * 3000], 0.02) == [sampler.chunk_blocks(18 * 3000, 0.02)]
    blocks = sampler.stream_chunk_blocks([18 * n for n in sizes], 0.02, chunk_cap=4 * sampler.BLOCK)
    assert sum(blocks) <= 4 + len(sizes) and min(blocks) >= 1
    many = jax.jit(lambda ks: faults.inject_stuck_at_each(ks, ws, 0.02, 0.3, MASK18)[0]).lower(ks).as_text()
    one = jax.jit(lambda k: faults.inject_stuck_at(k, ws[0], 0.02, 0.3, MASK18)[0]).lower(ks[0]).as_text()
    assert many.count("stablehlo.while") == one.count("stablehlo.while")  # the sampler's loop (and PRNG's)
    with pytest.raises(JaxfaultError, match="one key per word array"):
        faults.inject_stuck_at_each(ks[:2], ws, 0.02)
    same, st0 = faults.inject_stuck_at_each(ks, ws, 0.0)
    assert all(a is b for a, b in zip(same, ws)) and int(st0.n_faults) == 0


def test_flips_on_many_arrays_equal_flips_per_array():
    """inject_flips_each gives array i exactly inject_flips(keys[i], words[i]) (XOR, every stored
    cell), and the plain fp32 bit-flip model, which draws all its kernels in that one loop, equals
    the per-kernel draw with keys fold_in(key, kernel index)."""
    sizes = (2500, 3, 900)
    ws = [jax.random.bits(jax.random.key(40 + i), (n,), jnp.uint32) for i, n in enumerate(sizes)]
    ks = [jax.random.key(50 + i) for i in range(len(sizes))]
    each, st = faults.inject_flips_each(ks, ws, 0.01, MASK18)
    alone = [faults.inject_flips(k, w, 0.01, MASK18) for k, w in zip(ks, ws)]
    for a, (b, _) in zip(each, alone):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(st.n_faults) == sum(int(s.n_faults) for _, s in alone) > 0 and int(st.n_zero_to_one) == 0

    from jaxfault.faults.fault_models import bit_flips
    params = {"Dense_0": {"kernel": jax.random.normal(jax.random.key(1), (30, 20)), "bias": jnp.ones(20)},
              "Dense_1": {"kernel": jax.random.normal(jax.random.key(2), (20, 7)), "bias": jnp.ones(7)}}
    key = jax.random.key(9)
    out, stats = jax.jit(lambda k, v: bit_flips(rate_bound=0.02).perturb(k, v, 0.02))(key, {"params": params})
    total = 0
    for i, name in enumerate(("Dense_0", "Dense_1")):
        words_i = jax.lax.bitcast_convert_type(params[name]["kernel"], jnp.uint32).ravel()
        ref, s = faults.inject_flips(jax.random.fold_in(key, i), words_i, 0.02)
        got = jax.lax.bitcast_convert_type(out["params"][name]["kernel"], jnp.uint32).ravel()
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
        np.testing.assert_array_equal(np.asarray(out["params"][name]["bias"]), np.asarray(params[name]["bias"]))
        total += int(s.n_faults)
    assert int(stats.n_faults) == total > 0 and float(stats.n_cells) == 32 * (600 + 140)


def test_edge_rates():
    w = jnp.arange(1000, dtype=jnp.uint32) * jnp.uint32(2654435761)
    out, st = faults.inject_stuck_at(jax.random.key(0), w, 0.0, 0.5, MASK18)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(w))
    assert int(st.n_faults) == 0 and float(st.realised_ber) == 0.0
    out, st = faults.inject_stuck_at(jax.random.key(0), w, 1.0, 1.0, MASK18)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(w) | np.uint32(MASK18))
    assert float(st.realised_ber) == 1.0


def test_same_key_same_result_and_injection_equals_maps():
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.integers(0, 2 ** 32, N, dtype=np.uint64).astype(np.uint32))
    k = jax.random.key(1)
    a, sa = faults.inject_stuck_at(k, w, 1e-2, 0.2, MASK18)
    b, sb = faults.inject_stuck_at(k, w, 1e-2, 0.2, MASK18)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(sa.n_faults) == int(sb.n_faults)
    c, _ = faults.inject_stuck_at(jax.random.key(12), w, 1e-2, 0.2, MASK18)
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    m10, m01, sm = faults.stuck_at_maps(k, w.shape[0], 1e-2, 0.2, MASK18)
    np.testing.assert_array_equal(np.asarray(faults.apply_stuck_at(w, m10, m01)), np.asarray(a))
    assert int(sm.n_faults) == int(sa.n_faults)
    # flips: XOR of the same cells that the 1->0 map of q = 0 names
    f, sf = faults.inject_flips(k, w, 1e-2, MASK18)
    fm, _ = faults.flip_map(k, w.shape[0], 1e-2, MASK18)
    np.testing.assert_array_equal(np.asarray(f), np.asarray(w) ^ np.asarray(fm))
    assert int(sf.n_faults) == int(np.unpackbits(np.asarray(fm).view(np.uint8)).sum())


def test_apply_stuck_at_semantics_and_replay():
    w = np.array([0xFFFFFFFF, 0x00000000, 0xF0F0F0F0], np.uint32)
    m10 = np.array([0x0000FFFF, 0x0000FFFF, 0xFF000000], np.uint32)
    m01 = np.array([0x00000000, 0x80000000, 0x0000000F], np.uint32)
    out = np.asarray(faults.apply_stuck_at(w, m10, m01))
    np.testing.assert_array_equal(out, (w & ~m10) | m01)
    np.testing.assert_array_equal(out, [0xFFFF0000, 0x80000000, 0x00F0F0FF])
    out2, st = faults.inject_maps(w, m10, m01, stored_mask=0xFFFF0000)       # replay, stored cells only
    np.testing.assert_array_equal(np.asarray(out2), (w & ~(m10 & 0xFFFF0000)) | (m01 & 0xFFFF0000))
    assert int(st.n_faults) == 8 + 1 and int(st.n_zero_to_one) == 1
    assert float(st.realised_ber) == pytest.approx(9 / 48)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "x"])
def test_bad_rates_named(bad):
    with pytest.raises(JaxfaultError, match="ber"):
        faults.stuck_at_maps(jax.random.key(0), 10, bad, 0.0)
    with pytest.raises(JaxfaultError, match="zero_to_one"):
        faults.inject_stuck_at(jax.random.key(0), jnp.zeros(10, jnp.uint32), 0.1, bad)


def test_bad_arrays_named():
    with pytest.raises(JaxfaultError, match="float32"):
        faults.apply_stuck_at(np.zeros(3, np.float32), np.zeros(3, np.uint32), np.zeros(3, np.uint32))
    with pytest.raises(JaxfaultError, match="shapes"):
        faults.apply_stuck_at(np.zeros(3, np.uint32), np.zeros(4, np.uint32), np.zeros(3, np.uint32))
    with pytest.raises(JaxfaultError, match="int32"):
        faults.inject_stuck_at(jax.random.key(0), jnp.zeros(10, jnp.int32), 0.1)
    with pytest.raises(JaxfaultError, match="stored_mask"):
        faults.stuck_at_maps(jax.random.key(0), 10, 0.1, 0.0, 0)


def test_traced_rate_equals_static_rate_and_sweep_equals_loop():
    """A rate traced inside one compiled program (any rate_bound >= it) gives exactly the faults of
    the same rate given as a Python number; a vmapped sweep over rates equals a loop."""
    k = jax.random.key(5)
    w = jnp.asarray(np.random.default_rng(1).integers(0, 2 ** 32, N, dtype=np.uint64).astype(np.uint32))
    static = faults.inject_stuck_at(k, w, 1e-2, 0.2, MASK18)
    for bound in (1e-2, 0.05, 1.0):
        traced = jax.jit(lambda b, q: faults.inject_stuck_at(k, w, b, q, MASK18, rate_bound=bound))(
            jnp.float32(1e-2), jnp.float32(0.2))
        for a, b in zip(jax.tree_util.tree_leaves(static), jax.tree_util.tree_leaves(traced)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    flips = faults.inject_flips(k, w, 1e-2, MASK18)
    flips_t = jax.jit(lambda b: faults.inject_flips(k, w, b, MASK18, rate_bound=0.05))(jnp.float32(1e-2))
    np.testing.assert_array_equal(np.asarray(flips[0]), np.asarray(flips_t[0]))
    rates = [0.0, 1e-3, 1e-2, 0.05, 1.0]
    sweep = jax.jit(jax.vmap(lambda b: faults.stuck_at_maps(k, N, b, 0.3, MASK18, rate_bound=0.05)))(
        jnp.asarray(rates, jnp.float32))
    for i, p in enumerate(rates):
        one = faults.stuck_at_maps(k, N, p, 0.3, MASK18)
        for a, b in zip(jax.tree_util.tree_leaves(sweep), jax.tree_util.tree_leaves(one)):
            np.testing.assert_array_equal(np.asarray(a)[i], np.asarray(b))
        ok, info = within(int(sweep[2].n_faults[i]), N * 18, p)
        assert ok, info
    assert float(sweep[2].realised_ber[-1]) == 1.0


def test_vmap_over_keys_equals_loop():
    keys = jax.random.split(jax.random.key(6), 4)
    batched = jax.jit(jax.vmap(lambda kk: faults.stuck_at_maps(kk, N, 1e-2, 0.3, MASK18)))(keys)
    for i, kk in enumerate(keys):
        one = faults.stuck_at_maps(kk, N, 1e-2, 0.3, MASK18)
        for a, b in zip(jax.tree_util.tree_leaves(batched), jax.tree_util.tree_leaves(one)):
            np.testing.assert_array_equal(np.asarray(a)[i], np.asarray(b))


def test_traced_rate_validation_and_out_of_range_traced_rates_give_no_faults():
    with pytest.raises(JaxfaultError, match="rate_bound"):
        jax.jit(lambda b: faults.stuck_at_maps(jax.random.key(0), 10, b))(jnp.float32(0.1))
    with pytest.raises(JaxfaultError, match="ber 0.2 exceeds rate_bound 0.1"):
        faults.stuck_at_maps(jax.random.key(0), 10, 0.2, rate_bound=0.1)
    with pytest.raises(JaxfaultError, match="rate_bound"):
        faults.stuck_at_maps(jax.random.key(0), 10, 0.1, rate_bound=1.5)
    with pytest.raises(JaxfaultError, match="scalar"):
        jax.jit(lambda b: faults.stuck_at_maps(jax.random.key(0), 10, b, rate_bound=0.1))(jnp.zeros(2))
    f = jax.jit(lambda b: faults.stuck_at_maps(jax.random.key(0), 1000, b, 0.5, rate_bound=0.1)[2].n_faults)
    for bad in (float("nan"), -0.5, 1.5):
        assert int(f(jnp.float32(bad))) == 0


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_integer_words_of_any_width(bits):
    """bits-bit two's-complement words: only the low bits are cells; stuck-at on them equals Python
    integer arithmetic; the realised rate is over bits cells per word."""
    rng = np.random.default_rng(bits)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = rng.integers(lo, hi + 1, N)
    u = faults.int_to_words(jnp.asarray(q), bits)
    np.testing.assert_array_equal(np.asarray(faults.words_to_int(u, bits)), q)
    mask = faults.int_stored_mask(bits)
    out, st = faults.inject_stuck_at(jax.random.key(2), u, 0.02, 0.5, mask)
    assert not np.any(np.asarray(out) & ~np.uint32(mask))
    assert int(st.n_cells) == N * bits
    ok, info = within(int(st.n_faults), N * bits, 0.02)
    assert ok, info
    m10, m01, _ = faults.stuck_at_maps(jax.random.key(2), N, 0.02, 0.5, mask)
    got = np.asarray(faults.apply_stuck_at_int(jnp.asarray(q), m10, m01, bits))
    want_u = (q.astype(np.int64) & mask & ~np.asarray(m10).astype(np.int64)) | np.asarray(m01).astype(np.int64)
    np.testing.assert_array_equal(got, np.where(want_u > hi, want_u - (1 << bits), want_u))
    np.testing.assert_array_equal(np.asarray(faults.words_to_int(out, bits)), got)


def test_merge_stats():
    a = faults.fault_stats(3, 1, 100)
    b = faults.fault_stats(5, 4, 300)
    m = faults.merge_stats([a, b])
    assert (int(m.n_faults), int(m.n_zero_to_one), float(m.n_cells)) == (8, 5, 400.0)
    assert float(m.realised_ber) == pytest.approx(0.02) and float(m.zero_to_one_share) == pytest.approx(5 / 8)
