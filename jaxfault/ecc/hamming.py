"""Hamming(7,4) single-error correction as used by Sparrow (docs/sparrow.md, "The encoding, bit by bit").

Data bits b0..b3, parity p1 = b0^b1^b3, p2 = b0^b2^b3, p3 = b1^b2^b3. The syndrome
s = s1 | s2<<1 | s3<<2 names the flipped data bit: 0b011 -> b0, 0b101 -> b1, 0b110 -> b2,
0b111 -> b3; a single-bit syndrome means a parity bit was hit (no data change).
Functions work elementwise on integer arrays of 0/1 values (any shape), or on packed nibbles.
"""
from __future__ import annotations

import jax.numpy as jnp


def parity(b0, b1, b2, b3):
    """(p1, p2, p3) for data bits b0..b3."""
    return b0 ^ b1 ^ b3, b0 ^ b2 ^ b3, b1 ^ b2 ^ b3


def syndrome(b0, b1, b2, b3, p1, p2, p3):
    """s = s1 | s2<<1 | s3<<2."""
    s1 = b0 ^ b1 ^ b3 ^ p1
    s2 = b0 ^ b2 ^ b3 ^ p2
    s3 = b1 ^ b2 ^ b3 ^ p3
    return s1 | (s2 << 1) | (s3 << 2)


def correct(b0, b1, b2, b3, p1, p2, p3):
    """Corrected (b0, b1, b2, b3): flip the data bit named by the syndrome (single-error correction)."""
    s = syndrome(b0, b1, b2, b3, p1, p2, p3)
    one = jnp.ones_like(b0)
    zero = jnp.zeros_like(b0)
    return (b0 ^ jnp.where(s == 0b011, one, zero),
            b1 ^ jnp.where(s == 0b101, one, zero),
            b2 ^ jnp.where(s == 0b110, one, zero),
            b3 ^ jnp.where(s == 0b111, one, zero))


def encode_nibble(d):
    """7-bit codeword (b0..b3 in bits 6..3, p1 p2 p3 in bits 2..0) for 4-bit values d = b0b1b2b3."""
    b0, b1, b2, b3 = (d >> 3) & 1, (d >> 2) & 1, (d >> 1) & 1, d & 1
    p1, p2, p3 = parity(b0, b1, b2, b3)
    return (d << 3) | (p1 << 2) | (p2 << 1) | p3
