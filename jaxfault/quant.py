"""Symmetric per-tensor weight quantization (SPEC 3.1) and fake-quantization with a
straight-through gradient for quantization-aware training."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxfault.errors import JaxfaultError

SUPPORTED_BITS = (4, 8, 16)


def check_bits(bits: int) -> int:
    """Validate a quantization precision (4, 8 or 16 bits)."""
    if bits not in SUPPORTED_BITS:
        raise JaxfaultError(f"precision must be one of {SUPPORTED_BITS}, got {bits!r}")
    return int(bits)


def quant_step(w: jax.Array, bits: int = 8) -> jax.Array:
    """delta = max|W| / (2^(bits-1) - 1); a tiny floor keeps all-zero tensors finite."""
    qmax = 2 ** (bits - 1) - 1
    return jnp.maximum(jnp.max(jnp.abs(w)), jnp.finfo(jnp.float32).tiny) / qmax


def quantize(w: jax.Array, bits: int = 8) -> tuple[jax.Array, jax.Array]:
    """Return (q, delta): q = round(clip(W, -max|W|, max|W|) / delta) as int32 in [-(2^(b-1)-1), 2^(b-1)-1]."""
    delta = quant_step(w, bits)
    qmax = 2 ** (bits - 1) - 1
    q = jnp.clip(jnp.round(w / delta), -qmax, qmax).astype(jnp.int32)
    return q, delta


def dequantize(q: jax.Array, delta: jax.Array) -> jax.Array:
    """W' = q * delta as float32."""
    return q.astype(jnp.float32) * delta


def fake_quant(w: jax.Array, bits: int = 8) -> jax.Array:
    """Quantize-dequantize in the forward pass, identity gradient (straight-through estimator)."""
    q, delta = quantize(w, bits)
    wq = dequantize(q, delta).astype(w.dtype)
    return w + jax.lax.stop_gradient(wq - w)
