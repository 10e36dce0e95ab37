"""Symmetric per-tensor weight quantization and fake-quantization with a straight-through
gradient for quantization-aware training.

``quantize(w, bits)`` is bit-exact to the reference's symmetric quantizer for every float32
input with a nonzero maximum, ties included:

    delta = max|W| / (2^(bits-1) - 1)            (float32 division)
    q     = round(clip(W, -max|W|, max|W|) / delta)  (float32 division, round half to even)

Both are true IEEE divisions. XLA rewrites a division by a broadcast scalar (or by a constant)
into a multiplication by its reciprocal, which is one ulp off the quotient for some weights and
moves exact ties such as -82.5 to -82.500008 (so the weight rounds to -83 instead of -82). The
divisor is therefore passed through an optimisation barrier, which keeps the division a
division. Where delta is zero (an all-zero tensor, or one so small that delta underflows) delta
is 1, so q = 0 instead of the reference's 0/0 = NaN.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxfault.core.errors import JaxfaultError

SUPPORTED_BITS = (4, 8, 16)


def check_bits(bits: int) -> int:
    """Validate a quantization precision (4, 8 or 16 bits)."""
    if bits not in SUPPORTED_BITS:
        raise JaxfaultError(f"precision must be one of {SUPPORTED_BITS}, got {bits!r}")
    return int(bits)


def _true_divide(x: jax.Array, y: jax.Array) -> jax.Array:
    """x / y as an IEEE division (y broadcast to x's shape behind a barrier, see module docstring)."""
    y = jax.lax.optimization_barrier(jnp.broadcast_to(jnp.asarray(y, x.dtype), jnp.shape(x)))
    return x / y


def quant_step(w: jax.Array, bits: int = 8) -> jax.Array:
    """delta = max|W| / (2^(bits-1) - 1); 1 where that is zero (all-zero tensors quantize to 0)."""
    qmax = 2 ** (bits - 1) - 1
    delta = _true_divide(jnp.max(jnp.abs(w)).astype(jnp.float32), jnp.float32(qmax))
    return jnp.where(delta > 0, delta, jnp.float32(1.0))


def quantize(w: jax.Array, bits: int = 8) -> tuple[jax.Array, jax.Array]:
    """Return (q, delta): q = round(clip(W, -max|W|, max|W|) / delta) as int32 in [-(2^(b-1)-1), 2^(b-1)-1].

    float32 arithmetic with true divisions and round-half-to-even (see the module docstring).
    """
    w = jnp.asarray(w, jnp.float32)
    m = jnp.max(jnp.abs(w))
    delta = quant_step(w, bits)
    qmax = 2 ** (bits - 1) - 1
    q = jnp.round(_true_divide(jnp.clip(w, -m, m), delta))
    return jnp.clip(q, -qmax, qmax).astype(jnp.int32), delta


def dequantize(q: jax.Array, delta: jax.Array) -> jax.Array:
    """W' = q * delta as float32."""
    return q.astype(jnp.float32) * delta


def fake_quant(w: jax.Array, bits: int = 8) -> jax.Array:
    """Quantize-dequantize in the forward pass, identity gradient (straight-through estimator)."""
    q, delta = quantize(w, bits)
    wq = dequantize(q, delta).astype(w.dtype)
    return w + jax.lax.stop_gradient(wq - w)
