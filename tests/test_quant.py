"""quant.quantize against a numpy float32 transcription of the reference's symmetric quantizer:

    delta = max|W| / (2^(p-1) - 1);  q = round(clip(W, -max|W|, max|W|) / delta)

with float32 true divisions and round half to even (as torch.round). Bit-exact: no tolerance.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfault.core.quant import dequantize, quantize


def reference_quantize(w: np.ndarray, bits: int):
    w = np.asarray(w, np.float32)
    m = np.max(np.abs(w))
    delta = np.float32(m) / np.float32(2 ** (bits - 1) - 1)          # float32 / float32
    return np.round(np.clip(w, -m, m) / delta), delta                 # np.round: half to even


def _tie_cases(n_cases=40, seed=0):
    """Layers whose weights include exact .5 multiples of delta (ties) on which the reciprocal
    product w * (1/delta) differs from the quotient w / delta."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n_cases:
        m = np.float32(rng.uniform(0.05, 3.0))
        delta = m / np.float32(127)
        for half in rng.integers(-126, 126, 64) + 0.5:
            w = np.float32(half) * delta
            if w / delta == np.float32(half) and w * (np.float32(1) / delta) != np.float32(half):
                out.append((m, w, half))
                break
    return out


def test_ties_are_rounded_half_to_even_from_the_true_quotient():
    cases = _tie_cases()
    for m, w_tie, half in cases:
        w = np.array([m, -m * np.float32(0.5), w_tie, -w_tie], np.float32)
        q, delta = jax.jit(quantize, static_argnums=1)(jnp.asarray(w), 8)
        want, want_delta = reference_quantize(w, 8)
        assert np.float32(delta) == want_delta
        np.testing.assert_array_equal(np.asarray(q), want)
        assert abs(want[2]) == abs(np.round(half)) and want[2] % 2 == 0        # an even integer
    # the transcription discriminates: the reciprocal product rounds some of these ties the other way
    recip = [np.round(w * (np.float32(1) / (m / np.float32(127)))) for m, w, _ in cases]
    assert any(r != np.round(np.float32(h)) for r, (_, _, h) in zip(recip, cases))


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_one_million_random_weights_bit_exact(bits):
    rng = np.random.default_rng(bits)
    w = (rng.standard_normal(1_000_000) * rng.uniform(0.01, 2.0)).astype(np.float32)
    q, delta = jax.jit(quantize, static_argnums=1)(jnp.asarray(w), bits)
    want, want_delta = reference_quantize(w, bits)
    assert np.float32(delta) == want_delta
    np.testing.assert_array_equal(np.asarray(q), want)
    eager, _ = quantize(jnp.asarray(w), bits)                      # op-by-op dispatch: same numbers
    np.testing.assert_array_equal(np.asarray(eager), want)


def test_kernel_shapes_and_dequantize():
    w = jax.random.normal(jax.random.key(0), (3, 3, 4, 8))
    q, delta = quantize(w, 8)
    want, want_delta = reference_quantize(np.asarray(w), 8)
    np.testing.assert_array_equal(np.asarray(q), want)
    assert q.dtype == jnp.int32 and np.abs(np.asarray(q)).max() == 127
    np.testing.assert_array_equal(np.asarray(dequantize(q, delta)), want.astype(np.float32) * want_delta)


def test_all_zero_tensor_quantizes_to_zero():
    q, delta = quantize(jnp.zeros((4, 4)), 8)
    assert not np.any(np.asarray(q)) and np.isfinite(float(delta)) and float(delta) > 0
