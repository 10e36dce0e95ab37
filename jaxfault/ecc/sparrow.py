"""Sparrow ECC (ISLPED 2024), bit for bit as docs/sparrow.md, "The encoding, bit by bit", states it.

Blocks of B in {16, 32, 64} bf16 weights (held as fp32 words) share one maximum exponent max_e.
Each weight stores 3 sign copies, its exponent as the difference d = max_e - E(w) (4 bits, or 5 in
the wide mode F = 1 for blocks spanning >= 16 exponent steps) protected by Hamming(7,4), 7 (F = 0)
or 6 (F = 1) mantissa bits, and one (B = 16: two) bits of replicated block metadata (max_e, F).
Stored bits per weight: 18 (bits 31..14) for B = 32/64, 19 (bits 31..13) for B = 16.

Zero words (the reference's quirk). A zero (or any E = 0 word) in an F = 0 block whose max_e >= 16 gets a
difference d >= 16 that does not fit the 4-bit field. The reference ORs d << 25 anyway (for d = 31:
bit 29, a sign copy, becomes 1; d reads back as d & 15). jaxfault's default (compat=False) stores
such a word cleanly as the smallest 4-bit-mode magnitude (d = 15, mantissa 0, sign copies intact);
compat=True reproduces the reference bit for bit. Without faults both decode a zero in an
F = 0 block with max_e >= 31 to the same value, +-2**(max_e - 15 - 127); they differ in the stored
bit 29 and, for 16 <= max_e <= 30 (all weights below 2**-96), in the decoded value.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault.core.bits import BF16_MASK, check_finite_words
from jaxfault.ecc import hamming
from jaxfault.core.errors import JaxfaultError, check

BLOCK_SIZES = (16, 32, 64)
U32 = jnp.uint32


def check_block_size(block_size) -> int:
    """Return block_size as int if it is 16, 32 or 64; else raise JaxfaultError naming it."""
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or int(block_size) not in BLOCK_SIZES:
        raise JaxfaultError(f"block_size must be one of 16, 32, 64, got {block_size!r}")
    return int(block_size)


def stored_bits(block_size: int) -> int:
    """Bits stored per weight: 19 for B = 16 (bits 31..13), 18 for B = 32, 64 (bits 31..14)."""
    return 19 if check_block_size(block_size) == 16 else 18


def stored_mask(block_size: int) -> int:
    """uint32 mask of the stored bit positions of an encoded word."""
    return 0xFFFFE000 if check_block_size(block_size) == 16 else 0xFFFFC000


def _check_words(words, block_size: int, what: str = "words"):
    if isinstance(words, np.ndarray) or isinstance(words, jax.Array):
        dt = words.dtype
    else:
        raise JaxfaultError(f"{what} must be a uint32 array, got {type(words).__name__}")
    check(dt == np.uint32, f"{what} must have dtype uint32 (fp32 bit patterns), got {dt}")
    check(words.ndim == 1, f"{what} must be 1-D, got shape {tuple(words.shape)}")
    check(words.shape[0] % block_size == 0,
          f"{what} length {words.shape[0]} is not a multiple of block_size {block_size}")
    return jnp.asarray(words)


def _u(x):
    return jnp.asarray(x, dtype=U32)


def _bit(w, k):
    return (w >> k) & _u(1)


@partial(jax.jit, static_argnames=("block_size", "compat"))
def encode_blocks(words: jax.Array, block_size: int, compat: bool = False) -> jax.Array:
    """Sparrow-encode uint32 fp32 words of shape (..., n_blocks * B); no input checks (jittable)."""
    B = block_size
    shape = words.shape
    w = words.reshape(shape[:-1] + (-1, B)) & BF16_MASK
    e8 = ((w >> 23) & _u(0xFF)).astype(jnp.uint8)
    # uint8 reductions: XLA CPU vectorises these ~20x better than 32-bit ones over short rows
    max_e = jnp.max(e8, axis=-1, keepdims=True).astype(jnp.int32)
    min_e = jnp.min(jnp.where(e8 != 0, e8, jnp.uint8(255)), axis=-1, keepdims=True).astype(jnp.int32)
    e = e8.astype(jnp.int32)
    diff = jnp.maximum(max_e - min_e, 0)
    wide = diff >= 16                                   # F
    w = jnp.where(wide, w & _u(0xFFFE0000), w)
    d = max_e - e
    small = d >= 32
    w = jnp.where(small, (w & _u(0x80000000)) | (jax.lax.bitcast_convert_type(max_e - 31, U32) << 23), w)
    d = jnp.where(small, 31, d)
    if not compat:
        clamp = (~wide) & (d >= 16)                     # only E = 0 words can get here
        w = jnp.where(clamp, w & _u(0x80000000), w)
        d = jnp.where(clamp, 15, d)
    du = jax.lax.bitcast_convert_type(d, U32)
    s = w >> 31
    out = (s << 31) | (s << 30) | (s << 29)
    narrow_fields = (du << 25) | (_bit(w, 22) << 24) | (((w >> 16) & _u(0x3F)) << 15)
    wide_fields = (du << 24) | (((w >> 17) & _u(0x3F)) << 15)
    out = out | jnp.where(wide, wide_fields, narrow_fields)
    p1, p2, p3 = hamming.parity(_bit(out, 28), _bit(out, 27), _bit(out, 26), _bit(out, 25))
    out = out | (p1 << 23) | (p2 << 22) | (p3 << 21)
    # metadata bits from the position in the block (iota): much faster on XLA CPU than constant
    # per-position tables broadcast against per-block values
    max_eu = jax.lax.bitcast_convert_type(max_e, U32)
    c = jax.lax.broadcasted_iota(U32, out.shape, out.ndim - 1)
    max_bit = (max_eu >> (_u(7) - (c & _u(7)))) & _u(1)
    if B == 16:
        meta14 = jnp.where(c >= _u(8), wide.astype(U32), max_bit)
        out = out | (meta14 << 14) | (max_bit << 13)
    else:
        meta14 = jnp.where(c >= _u(B - 8), wide.astype(U32), max_bit)
        out = out | (meta14 << 14)
    return out.reshape(shape)


def _majority(bits, axis):
    n = bits.shape[axis]
    return (jnp.sum(bits, axis=axis, dtype=U32) * 2 > n).astype(U32)


@partial(jax.jit, static_argnames=("block_size",))
def decode_blocks(words: jax.Array, block_size: int) -> jax.Array:
    """Sparrow-decode uint32 words of shape (..., n_blocks * B) back to bf16-in-fp32 words."""
    B = block_size
    shape = words.shape
    c = words.reshape(shape[:-1] + (-1, B))
    b0, b1, b2, b3 = hamming.correct(_bit(c, 28), _bit(c, 27), _bit(c, 26), _bit(c, 25),
                                     _bit(c, 23), _bit(c, 22), _bit(c, 21))
    m14 = _bit(c, 14)
    lead = c.shape[:-1]
    if B == 16:
        m13 = _bit(c, 13)
        copies = jnp.stack([m14[..., 0:8], m13[..., 0:8], m13[..., 8:16]], axis=-2)
    else:
        copies = m14[..., :B - 8].reshape(lead + ((B - 8) // 8, 8))
    bits = _majority(copies, axis=-2)                   # (..., nb, 8), MSB first
    max_e = jnp.sum(bits << jnp.arange(7, -1, -1, dtype=U32), axis=-1, keepdims=True, dtype=U32)
    wide = _majority(m14[..., B - 8:B - 1], axis=-1)[..., None] == 1
    sign = _majority(jnp.stack([_bit(c, 31), _bit(c, 30), _bit(c, 29)], axis=-1), axis=-1)
    d4 = (b0 << 3) | (b1 << 2) | (b2 << 1) | b3
    d = jnp.where(wide, (d4 << 1) | _bit(c, 24), d4)
    expo = (max_e - d) << 23                             # uint32 wrap-around = 32-bit two's complement
    mant6 = (c >> 15) & _u(0x3F)
    mant = jnp.where(wide, mant6 << 17, (_bit(c, 24) << 22) | (mant6 << 16))
    out = ((sign << 31) | expo | mant) & BF16_MASK
    return out.reshape(shape)


def encode(words, block_size: int, *, compat: bool = False) -> jax.Array:
    """Sparrow-encode a 1-D uint32 array of fp32 bit patterns (length a multiple of block_size).

    Words are truncated to bf16 first. NaN/Inf words are rejected (checked when not traced).
    compat=True keeps the reference's zero-word quirk bit for bit (see module docstring).
    """
    B = check_block_size(block_size)
    words = _check_words(words, B)
    check_finite_words(words, "words")
    return encode_blocks(words, B, bool(compat))


def decode(words, block_size: int) -> jax.Array:
    """Sparrow-decode a 1-D uint32 array of stored words (bits outside stored_mask are ignored)."""
    B = check_block_size(block_size)
    words = _check_words(words, B)
    return decode_blocks(words, B)
