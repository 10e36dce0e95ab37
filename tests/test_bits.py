"""Bit utilities: lossless casts, fields, bf16 truncation, pytree <-> padded words."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfault.core import bits
from jaxfault.core.errors import JaxfaultError


@pytest.mark.parametrize("dtype,udt", [(jnp.float32, np.uint32), (jnp.float16, np.uint16), (jnp.bfloat16, np.uint16)])
def test_cast_round_trip_is_lossless(dtype, udt):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, np.iinfo(udt).max, 1000, dtype=np.uint64).astype(udt)
    w = jnp.asarray(raw)
    x = bits.bits_to_float(w, dtype)
    assert x.dtype == dtype
    np.testing.assert_array_equal(np.asarray(bits.float_to_bits(x)), raw)   # NaN payloads included


def test_fields_of_known_values():
    x = jnp.asarray([1.0, -2.0, 0.0, 1.5, 2.0 ** -130], jnp.float32)
    w = bits.float_to_bits(x)
    np.testing.assert_array_equal(bits.sign_field(w), [0, 1, 0, 0, 0])
    np.testing.assert_array_equal(bits.exponent_field(w), [127, 128, 0, 127, 0])
    np.testing.assert_array_equal(bits.mantissa_field(w), [0, 0, 0, 1 << 22, 1 << 19])
    h = bits.float_to_bits(jnp.asarray([1.5, -2.0], jnp.bfloat16))
    np.testing.assert_array_equal(bits.exponent_field(h, jnp.bfloat16), [127, 128])
    np.testing.assert_array_equal(bits.mantissa_field(h, jnp.bfloat16), [64, 0])
    np.testing.assert_array_equal(bits.sign_field(h, jnp.bfloat16), [0, 1])
    f = bits.float_to_bits(jnp.asarray([1.5, -2.0], jnp.float16))
    np.testing.assert_array_equal(bits.exponent_field(f, jnp.float16), [15, 16])


def test_bf16_truncation_matches_top_half():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(1000).astype(np.float32)
    w = np.asarray(bits.bf16_words(x))
    np.testing.assert_array_equal(w, x.view(np.uint32) & 0xFFFF0000)
    # truncation toward zero, equal to bf16's top 16 bits
    np.testing.assert_array_equal(w >> 16, np.asarray(bits.float_to_bits(jnp.asarray(w.view(np.float32)).astype(jnp.bfloat16))))
    assert np.all(np.abs(np.asarray(bits.bf16_round_trip(x))) <= np.abs(x))


def test_bad_dtypes_named():
    with pytest.raises(JaxfaultError, match="int32"):
        bits.float_to_bits(jnp.zeros(3, jnp.int32))
    with pytest.raises(JaxfaultError, match="uint16"):
        bits.bits_to_float(jnp.zeros(3, jnp.uint16), jnp.float32)
    with pytest.raises(JaxfaultError, match="float32"):
        bits.truncate_bf16(jnp.zeros(3, jnp.float32))


def _params():
    k = jax.random.split(jax.random.key(0), 3)
    return {"Conv_0": {"kernel": jax.random.normal(k[0], (3, 3, 1, 4)), "bias": jnp.ones(4)},
            "Dense_0": {"kernel": jax.random.normal(k[1], (36, 5)), "bias": jnp.ones(5)},
            "Dense_1": {"kernel": jax.random.normal(k[2], (5, 3)).astype(jnp.bfloat16)}}


@pytest.mark.parametrize("block", [16, 32, 64])
@pytest.mark.parametrize("extra", [False, True])
def test_pytree_round_trip_padding_never_leaks(block, extra):
    p = _params()
    words, layout = bits.pytree_to_words(p, block, extra_block=extra)
    n = 36 + 180 + 15
    assert layout.n_values == n and words.shape[0] % block == 0 and words.shape[0] >= n
    assert layout.names == ("Conv_0/kernel", "Dense_0/kernel", "Dense_1/kernel")
    np.testing.assert_array_equal(np.asarray(words[n:]), 0)
    # poison the padding: it must not reach any leaf
    poisoned = words.at[n:].set(jnp.uint32(0x3F800000))
    back = bits.words_to_pytree(p, poisoned, layout)
    for name in ("Conv_0", "Dense_0", "Dense_1"):
        ref = np.asarray(bits.bf16_round_trip(p[name]["kernel"].astype(jnp.float32)))
        got = back[name]["kernel"]
        assert got.dtype == p[name]["kernel"].dtype and got.shape == p[name]["kernel"].shape
        np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), ref)
    assert back["Conv_0"]["bias"] is p["Conv_0"]["bias"]


def test_extra_block_only_when_exact_multiple():
    assert bits.padded_length(64, 64, extra_block=True) == 128
    assert bits.padded_length(64, 64) == 64
    assert bits.padded_length(65, 64, extra_block=True) == 128
    assert bits.padded_length(0, 16) == 0


def test_words_to_pytree_dtype_override_and_length_check():
    p = _params()
    words, layout = bits.pytree_to_words(p, 32)
    back = bits.words_to_pytree(p, words, layout, dtype=jnp.bfloat16)
    assert back["Dense_0"]["kernel"].dtype == jnp.bfloat16
    with pytest.raises(JaxfaultError, match="length"):
        bits.words_to_pytree(p, words[:-32], layout)


def test_check_finite_words_names_value():
    w = np.asarray(bits.float_to_bits(jnp.asarray([1.0, np.inf, 2.0], jnp.float32)))
    with pytest.raises(JaxfaultError, match="inf"):
        bits.check_finite_words(w)


def test_integer_bf16_conversions_equal_xla_casts_bit_for_bit():
    """widen_bf16 over every bf16 word, narrow_to_bf16 over random float32 words of every kind
    (NaNs, infinities, subnormals, exact ties, overflow to infinity): the same bits as XLA's
    convert, both compiled (operands passed as arguments, so nothing is constant-folded)."""
    from jaxfault.core.bits import narrow_to_bf16, widen_bf16

    every = jax.lax.bitcast_convert_type(jnp.arange(1 << 16, dtype=jnp.uint32).astype(jnp.uint16), jnp.bfloat16)
    got, want = jax.jit(widen_bf16)(every), jax.jit(lambda a: a.astype(jnp.float32))(every)
    np.testing.assert_array_equal(np.asarray(got).view(np.uint32), np.asarray(want).view(np.uint32))
    rng = np.random.default_rng(0)
    words = rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32)
    ties = (rng.integers(0, 1 << 16, 1 << 12, dtype=np.uint64).astype(np.uint32) << 16) | np.uint32(0x8000)
    edges = np.array([0x7F7FFFFF, 0x7F7F8000, 0x7F7F7FFF, 0xFF7FFFFF, 0x7F800000, 0xFF800000, 0x7F800001, 0xFFC00001,
                      0x00000001, 0x80008000, 0x00018000, 0x007FFFFF, 0x00000000, 0x80000000], np.uint32)
    y = jnp.asarray(np.concatenate([words, ties, edges]).view(np.float32))
    got, want = jax.jit(narrow_to_bf16)(y), jax.jit(lambda a: a.astype(jnp.bfloat16))(y)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got).view(np.uint16), np.asarray(want).view(np.uint16))
