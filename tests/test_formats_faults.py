"""Faults on stored bits of any format, and the format protection schemes.

Statistical tolerance: a count of faulty cells among n cells at rate p is Binomial(n, p); every
check allows 5 standard deviations (a false failure has probability < 6e-7 per check, and the
keys are fixed, so the test is deterministic)."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfault.core import formats as FM
from jaxfault.ecc.format_schemes import energy_stored_bits, get_format_scheme
from jaxfault.core.errors import JaxfaultError
from jaxfault.faults import placement as fp
from jaxfault.ecc.formatted import perturb_leaves
from jaxfault.faults.stored import Region, inject_regions, roles_table


def within_5_sigma(count, n, p):
    sd = np.sqrt(n * p * (1 - p))
    return abs(float(count) - n * p) <= 5 * sd


@pytest.fixture(scope="module")
def weights():
    return jnp.asarray(np.random.default_rng(0).standard_normal((64, 512)).astype(np.float32) * 0.1)


def test_realised_rate_per_bit_role_and_scale_faults(weights):
    fmt = FM.get("mxfp8_e4m3")
    p = 0.02
    x = fmt.quantize(weights)
    out, st = jax.jit(lambda w: perturb_leaves(jax.random.key(1), [w], fmt, p, 0.5))(x)
    n = x.size
    cells = {"sign": n, "exponent": 4 * n, "mantissa": 3 * n, "scale": 8 * n // 32}
    for role, c in cells.items():
        assert within_5_sigma(st[f"faults_{role}"], c, p), (role, int(st[f"faults_{role}"]), c * p)
        assert float(st[f"ber_{role}"]) == pytest.approx(float(st[f"faults_{role}"]) / c)
    assert int(st["scale_faults"]) == int(st["faults_scale"]) > 0
    assert int(st["n_cells"]) == sum(cells.values())
    assert within_5_sigma(st["n_zero_to_one"], int(st["n_faults"]), 0.5)
    # a traced rate in another program gives the faults of the static one (same key, same faults)
    bits = lambda a: np.asarray(a).view(np.uint32)  # noqa: E731 (faulty e4m3 words may be NaN)
    traced = jax.jit(lambda r: perturb_leaves(jax.random.key(1), [x], fmt, r, 0.5, rate_bound=0.05)[0][0])
    assert np.array_equal(bits(traced(jnp.float32(p))), bits(out[0]))


def test_flips_hit_each_role_at_the_rate_and_change_only_faulty_cells(weights):
    fmt = FM.get("float16")
    p = 0.01
    x = fmt.quantize(weights)
    out, st = jax.jit(lambda w: perturb_leaves(jax.random.key(2), [w], fmt, p, mode="flip"))(x)
    n = x.size
    for role, c in {"sign": n, "exponent": 5 * n, "mantissa": 10 * n}.items():
        assert within_5_sigma(st[f"faults_{role}"], c, p)
    assert int(st["n_zero_to_one"]) == 0
    # on the words themselves: exactly the faulty cells differ (decoding would canonicalise NaNs)
    words = jnp.reshape(fmt.encode(x).elements, (-1,))
    region = Region(words, fmt.element_mask, roles_table(fmt.element_roles))
    (bad,), st2 = inject_regions([jax.random.fold_in(jax.random.key(2), 0)], [region], p, mode="flip")
    diff = np.asarray(bad) ^ np.asarray(words)
    assert int(np.unpackbits(diff.view(np.uint8)).sum()) == int(st2["n_faults"]) == int(st["n_faults"])
    assert not (diff >> 16).any()


@pytest.mark.parametrize("placement", ["independent", pytest.param("memory_array", marks=pytest.mark.slow)])
def test_sram_integer_format_is_the_bits_path_bit_for_bit(placement):
    from jaxfault.neuralfuse.faults import sram_bit_errors

    rng = np.random.default_rng(3)
    v = {"params": {"Conv_0": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 1, 8)), jnp.float32),
                               "bias": jnp.zeros(8)},
                    "Dense_0": {"kernel": jnp.asarray(rng.standard_normal((72, 10)), jnp.float32)}}}
    a = sram_bit_errors(bits=4, placement=placement, rate_bound=0.05)
    b = sram_bit_errors(bits=4, placement=placement, rate_bound=0.05, format="int4")
    va, sa = jax.jit(lambda v: a.perturb(jax.random.key(4), v, 0.05))(a.prepare(v))
    vb, sb = jax.jit(lambda v: b.perturb(jax.random.key(4), v, 0.05))(b.prepare(v))
    assert all(np.array_equal(np.asarray(p), np.asarray(q)) for p, q in zip(jax.tree.leaves(va), jax.tree.leaves(vb)))
    assert int(sa.n_faults) == int(sb["n_faults"]) > 0


def test_memory_array_words_of_any_width_read_their_cells():
    cells = np.random.default_rng(5).random((fp.ARRAY_ROWS, fp.ARRAY_COLS)) < 0.3
    m = fp.pack_cells(jnp.asarray(cells))
    for bits in (6, 10, 24):
        n, start = 700, 37
        got, _ = fp.memory_array_word_maps(m, m, n, bits, start=start)
        per_row = 128 // bits
        k = start + np.arange(n)
        row, slot = (k // (16 * per_row)) % fp.ARRAY_ROWS, k % per_row
        cols = slot[:, None] * bits + np.arange(bits)
        want = (cells[row[:, None], cols] << np.arange(bits)).sum(1)
        assert np.array_equal(np.asarray(got), want)


# ------------------------------------------------------------------------------ schemes
def single_errors(regions):
    """Every stored cell of every region flipped on its own: (region, word, bit, role, faulty regions)."""
    out = []
    for i, r in enumerate(regions):
        w = np.asarray(r.words)
        for k in range(w.shape[0]):
            for b in range(32):
                if (r.mask >> b) & 1:
                    bad = [np.asarray(x.words).copy() for x in regions]
                    bad[i][k] ^= np.uint32(1 << b)
                    out.append((i, k, b, r.roles[b], bad))
    return out


def corrects(scheme, roles, bit, role):
    """Whether a single error in this stored cell must be corrected by the scheme."""
    if role in ("check", "copy") or scheme == "secded":
        return True
    exp = [b for b, r in enumerate(roles) if r in ("exponent", "scale")]
    if scheme == "exp-secded":
        return bit in exp
    return bit == exp[-1]                          # mset: the most significant exponent bit


SLOW = pytest.mark.slow
CASES = [("secded", "mxfp6_e3m2"), ("exp-secded", "float8_e5m2"), ("mset", "mxfp4_e2m1"),
         pytest.param("secded", "float16", marks=SLOW), pytest.param("secded", "int4", marks=SLOW),
         pytest.param("exp-secded", "mxfp6_e3m2", marks=SLOW), pytest.param("mset", "float8_e4m3fn", marks=SLOW)]


@pytest.mark.parametrize("scheme,name", CASES)
def test_every_single_error_is_corrected_where_protected_and_left_alone_elsewhere(scheme, name):
    s = get_format_scheme(scheme)
    fmt = FM.get(name)
    rng = np.random.default_rng(6)
    for roles in (fmt.element_roles, fmt.scale_roles):
        if not roles:
            continue
        words = rng.integers(0, 1 << len(roles), 11).astype(np.uint32)   # 11 words: a partial last group
        regions = s.encode(jnp.asarray(words), roles)
        cases = single_errors(regions)
        stacked = [jnp.asarray(np.stack([c[4][i] for c in cases])) for i in range(len(regions))]
        dec, corr, det = jax.vmap(lambda *rs: s.decode(list(rs), roles))(*stacked)
        for (i, k, b, role, _), d, dd in zip(cases, np.asarray(dec), np.asarray(det)):
            if corrects(scheme, roles, b, role):
                assert np.array_equal(d, words), (role, k, b)
            else:                                  # passed through unchanged: exactly that bit differs
                want = words.copy()
                want[k] ^= np.uint32(1 << b)
                assert np.array_equal(d, want), (role, k, b)
            assert dd == 0


@pytest.mark.slow
def test_secded_detects_every_double_error_in_a_codeword():
    s = get_format_scheme("secded")
    fmt = FM.get("float8_e4m3fn")
    words = jnp.asarray(np.random.default_rng(7).integers(0, 256, 8).astype(np.uint32))   # one 64-bit group
    regions = s.encode(words, fmt.element_roles)
    cells = [(i, k, b) for i, r in enumerate(regions) for k in range(r.words.shape[0]) for b in range(32)
             if (r.mask >> b) & 1]
    assert len(cells) == 72
    pairs = list(itertools.combinations(cells, 2))
    bad = [np.tile(np.asarray(r.words), (len(pairs), 1)) for r in regions]
    for j, pair in enumerate(pairs):
        for i, k, b in pair:
            bad[i][j, k] ^= np.uint32(1 << b)
    _, corr, det = jax.vmap(lambda *rs: s.decode(list(rs), fmt.element_roles))(*map(jnp.asarray, bad))
    assert (np.asarray(det) == 1).all() and (np.asarray(corr) == 0).all()


def test_stored_bits_energy_terms_and_bad_pairs():
    assert get_format_scheme("secded").stored_bits("float8_e4m3fn") == 9.0
    assert get_format_scheme("mset").stored_bits("float16") == 18.0
    assert get_format_scheme("none").stored_bits("mxfp4_e2m1") == 4.25
    assert get_format_scheme("exp-secded").stored_bits("float16") == 16 + 5 * 8 / 64
    assert energy_stored_bits("secded", "float8_e5m2") == 18.0
    from jaxfault.ecc.hbm import hbm_faults
    from jaxfault.neuralfuse.faults import sram_bit_errors

    with pytest.raises(JaxfaultError, match="protects bfloat16 words only"):
        hbm_faults(scheme="sparrow", format="float16")
    with pytest.raises(JaxfaultError, match="format 'int8' has none"):
        hbm_faults(scheme="mset", format="int8")
    # a name no test registers ('tmr' is registered by tests/toy_tmr_scheme.py in the same process)
    with pytest.raises(JaxfaultError, match="unknown format protection scheme 'no-such-code'"):
        hbm_faults(scheme="no-such-code", format="float16")
    with pytest.raises(JaxfaultError, match="unknown ECC scheme 'no-such-code'"):
        hbm_faults(scheme="no-such-code")
    with pytest.raises(JaxfaultError, match="unknown number format 'fp9'"):
        sram_bit_errors(format="fp9")
