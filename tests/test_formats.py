"""jaxfault.core.formats against ml_dtypes (scalar floats), jaxfault.core.quant (integers) and a numpy
transcription of the OCP MX v1.0 conversion written here (MX formats).

Every comparison is bit for bit (float32 bit patterns; NaN compared as NaN)."""
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jaxfault.core import formats as F
from jaxfault.core.errors import JaxfaultError

SCALAR = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
          "float8_e5m2": ml_dtypes.float8_e5m2}
# element format of each MX format: (ml_dtypes element type or None, exponent bits, mantissa bits, emax, max)
MX_ELEM = {"mxfp8_e4m3": (ml_dtypes.float8_e4m3fn, 4, 3, 8, 448.0),
           "mxfp8_e5m2": (ml_dtypes.float8_e5m2, 5, 2, 15, 57344.0),
           "mxfp6_e3m2": (ml_dtypes.float6_e3m2fn, 3, 2, 4, 28.0),
           "mxfp6_e2m3": (ml_dtypes.float6_e2m3fn, 2, 3, 2, 7.5),
           "mxfp4_e2m1": (ml_dtypes.float4_e2m1fn, 2, 1, 2, 6.0),
           "mxint8": (None, 0, 6, 0, 127 / 64)}


def same_bits(a, b) -> np.ndarray:
    """Elementwise: equal float32 bit patterns, or both NaN."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    return (np.isnan(a) & np.isnan(b)) | (a.view(np.uint32) == b.view(np.uint32))


def stored(elements, scales=None):
    return F.Stored(jnp.asarray(np.asarray(elements, np.uint32)),
                    jnp.asarray(np.zeros((0,), np.uint32) if scales is None else np.asarray(scales, np.uint32)))


# ------------------------------------------------------------------------------ scalar floats
@pytest.mark.parametrize("name", list(SCALAR))
def test_every_bit_pattern_decodes_to_ml_dtypes_value(name):
    fmt = F.get(name)
    codes = np.arange(2 ** fmt.bits, dtype=np.uint32)
    ref = codes.astype(np.uint16 if fmt.bits == 16 else np.uint8).view(SCALAR[name]).astype(np.float32)
    assert same_bits(fmt.decode(stored(codes)), ref).all()


def wide_values(fmt, n=40000, seed=0):
    """Random values over the format's whole range and beyond (overflow, underflow), plus every
    finite value of the format and every midpoint between neighbours (the ties)."""
    rng = np.random.default_rng(seed)
    lo = -160 if fmt.name == "bfloat16" else -30
    x = rng.choice([-1.0, 1.0], n) * np.exp2(rng.uniform(lo, 20 if fmt.bits == 8 else 130, n))
    codes = np.arange(2 ** fmt.bits, dtype=np.uint32)
    grid = codes.astype(np.uint16 if fmt.bits == 16 else np.uint8).view(SCALAR[fmt.name]).astype(np.float64)
    grid = np.unique(grid[np.isfinite(grid)])
    mids = (grid[:-1] + grid[1:]) / 2
    with np.errstate(over="ignore"):
        return np.concatenate([x, grid, mids, [0.0, -0.0, np.inf, -np.inf, np.nan]]).astype(np.float32)


@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e5m2", pytest.param("float16", marks=pytest.mark.slow),
                                  pytest.param("bfloat16", marks=pytest.mark.slow)])
def test_quantize_is_ml_dtypes_round_to_nearest_even_and_decode_encode_is_quantize(name):
    fmt = F.get(name)
    x = wide_values(fmt)
    with np.errstate(over="ignore"):
        ref = x.astype(SCALAR[name]).astype(np.float32)       # overflow -> Inf (e4m3fn: NaN), no saturation
    q = fmt.quantize(jnp.asarray(x))
    assert same_bits(q, ref).all()
    assert same_bits(fmt.decode(fmt.encode(jnp.asarray(x))), q).all()
    # the overflow region really was exercised: not saturated
    assert not np.isfinite(np.asarray(q)[np.abs(x) > 2 * fmt.max_finite]).any()


def test_float32_is_the_identity_and_roles_cover_every_bit():
    fmt = F.get("float32")
    x = np.array([1.5, -0.0, 3e-45, np.inf], np.float32)
    assert same_bits(fmt.quantize(jnp.asarray(x)), x).all()
    assert np.array_equal(np.asarray(fmt.encode(jnp.asarray(x)).elements), x.view(np.uint32))
    assert fmt.element_roles == ("mantissa",) * 23 + ("exponent",) * 8 + ("sign",)
    e4 = F.get("float8_e4m3fn")
    assert [lab for _, _, lab in e4.bit_labels()] == ["sign", "exp3", "exp2", "exp1", "exp0", "man2", "man1", "man0"]
    mx = F.get("mxfp4_e2m1")
    assert mx.element_roles == ("mantissa", "exponent", "exponent", "sign") and mx.scale_roles == ("scale",) * 8
    assert F.get("int4").element_roles == ("magnitude",) * 3 + ("sign",)


# ------------------------------------------------------------------------------ integers
def test_int_per_tensor_equals_jaxfault_quant_and_per_channel_numpy():
    from jaxfault.core.quant import quantize

    rng = np.random.default_rng(1)
    w = (rng.standard_normal((3, 5, 7)) * np.array([1e-3, 1.0, 30, 2, 0.5, 4, 1e-6])).astype(np.float32)
    for bits in (4, 8, 16):
        fmt = F.get(f"int{bits}")
        q, delta = quantize(jnp.asarray(w), bits)
        st = fmt.encode(jnp.asarray(w))
        assert np.array_equal(np.asarray(st.elements), np.asarray(q).astype(np.int64) & ((1 << bits) - 1))
        assert same_bits(fmt.quantize(jnp.asarray(w)), np.asarray(q, np.float32) * np.float32(delta)).all()
        assert same_bits(fmt.decode(st), fmt.quantize(jnp.asarray(w))).all()
        pc = F.get(f"int{bits}_per_channel")
        qmax = 2 ** (bits - 1) - 1
        m = np.abs(w).reshape(-1, 7).max(0)
        step = m / np.float32(qmax)
        ref = np.clip(np.round(w / step), -qmax, qmax).astype(np.int32).astype(np.float32) * step
        assert same_bits(pc.quantize(jnp.asarray(w)), ref).all()
        assert same_bits(pc.decode(pc.encode(jnp.asarray(w))), ref).all()


# ------------------------------------------------------------------------------ MX
def mx_reference(x: np.ndarray, name: str):
    """The OCP MX v1.0 conversion in float64 numpy: per block of 32 along the last axis,
    X = 2^(floor(log2 max|V|) - emax) (max|V| = 2^-126 for an all-zero block), clamped to
    2^[-127, 127]; P_i = V_i / X rounded to nearest even on the element grid (subnormals kept),
    saturated to the element's largest magnitude. Returns (values as float32, scale bytes)."""
    _, eb, mb, emax, top = MX_ELEM[name]
    n = x.shape[-1]
    nb = -(-n // 32)
    xb = np.pad(x.astype(np.float64), [(0, 0)] * (x.ndim - 1) + [(0, nb * 32 - n)]).reshape(x.shape[:-1] + (nb, 32))
    amax = np.abs(xb).max(-1)
    e = np.floor(np.log2(np.where(amax > 0, amax, 2.0 ** -126)))
    shared = np.clip(e - emax, -127, 127)
    p = xb / np.exp2(shared)[..., None]
    if name == "mxint8":
        r = np.clip(np.round(p * 64), -127, 127).astype(np.int64) / 64    # two's complement: no -0
    else:
        emin = 2 - 2 ** (eb - 1)
        ep = np.maximum(np.floor(np.log2(np.where(p != 0, np.abs(p), 1.0))), emin)
        quantum = np.exp2(ep - mb)
        r = np.clip(np.round(p / quantum) * quantum, -top, top)
    out = (r * np.exp2(shared)[..., None]).reshape(x.shape[:-1] + (nb * 32,))[..., :n]
    return out.astype(np.float32), (shared + 127).astype(np.uint32)


def mx_blocks(seed=2):
    """Blocks of every kind: random over many decades, all zero, tiny (fp32 subnormal), huge,
    with a partial last block, and ties on the element grid."""
    rng = np.random.default_rng(seed)
    rows = [rng.standard_normal(70) * np.exp2(rng.uniform(-20, 20, 70)),
            np.zeros(70),
            rng.standard_normal(70) * 1e-42,
            rng.standard_normal(70) * 1e38,
            np.concatenate([np.full(32, 1.0), np.full(38, 3e38)]),
            rng.integers(-64, 64, 70) / 32.0 + 1 / 64]           # many exact ties
    return np.stack(rows).astype(np.float32)


@pytest.fixture(scope="module")
def blocks():
    return mx_blocks()


@pytest.mark.parametrize("name", list(MX_ELEM))
def test_mx_equals_the_spec_transcription(name, blocks):
    fmt = F.get(name)
    ref, scales = mx_reference(blocks, name)
    st = fmt.encode(jnp.asarray(blocks))
    q = fmt.quantize(jnp.asarray(blocks))
    assert st.elements.shape == blocks.shape and st.scales.shape == (blocks.shape[0], 3)
    assert np.array_equal(np.asarray(st.scales), scales)
    assert same_bits(q, ref).all()
    assert same_bits(fmt.decode(st), q).all()
    elem_type = MX_ELEM[name][0]
    if elem_type is not None:   # element codes are ml_dtypes' codes of the scaled values
        p = ref.astype(np.float64) / np.exp2(np.repeat(scales.astype(np.float64) - 127, 32, -1)[:, :70])
        codes = p.astype(elem_type).view(np.uint8).astype(np.uint32) & fmt.element_mask
        assert np.array_equal(np.asarray(st.elements), codes)


def test_mx_nan_scale_and_faulty_words_decode():
    fmt = F.get("mxfp8_e4m3")
    x = np.ones((1, 40), np.float32)
    x[0, 3] = np.nan
    st = fmt.encode(jnp.asarray(x))
    assert np.asarray(st.scales).tolist() == [[255, 127 - 8]]
    d = np.asarray(fmt.decode(st))
    assert np.isnan(d[0, :32]).all() and (d[0, 32:] == 1.0).all()
    # a flipped scale bit moves all values of its block by a power of two: 119 ^ 2 = 117 -> x 2^-2
    bad = F.Stored(st.elements, st.scales.at[0, 1].set(st.scales[0, 1] ^ 2))
    assert (np.asarray(fmt.decode(bad))[0, 32:] == 0.25).all()


def test_bad_format_name_is_one_line():
    with pytest.raises(JaxfaultError, match="unknown number format 'fp9'"):
        F.get("fp9")
    with pytest.raises(JaxfaultError, match="did you mean 'int8'"):
        F.get("int9")
