"""Conventional SEC-DED baseline with Sparrow's 12.5 % overhead: an extended Hamming (72,64) code
over groups of four bf16 weights (64 data bits + 8 check bits = 18 stored bits per weight).

Layout: data bit j (0..63) is bit 16 + j % 16 of word j // 16 of the group; Hamming positions
1..71 hold check bits at 1, 2, 4, ..., 64 and data bits at the remaining positions in increasing
order; check bit 7 is the overall parity of all 72 bits. Check bits 2k and 2k+1 are stored in
bits 15 and 14 of word k of the group, so stored bits are 31..14 as for Sparrow B = 32/64.
Decoding corrects any single-bit error; a double error (even overall parity, nonzero syndrome) or
an invalid syndrome is detected and the data is returned as read (`decode_with_status` reports it).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault.core.bits import BF16_MASK


GROUP = 4
STORED_BITS = 18
STORED_MASK = 0xFFFFC000
U32 = jnp.uint32

_DATA_POS = np.array([p for p in range(1, 72) if p & (p - 1)], dtype=np.int64)   # 64 positions
assert _DATA_POS.size == 64
# masks over the packed 64 data bits (lo = bits 0..31, hi = 32..63) for each Hamming check bit
_MASK_LO = np.zeros(7, np.uint32)
_MASK_HI = np.zeros(7, np.uint32)
for _i in range(7):
    for _j, _p in enumerate(_DATA_POS):
        if (_p >> _i) & 1:
            if _j < 32:
                _MASK_LO[_i] |= np.uint32(1 << _j)
            else:
                _MASK_HI[_i] |= np.uint32(1 << (_j - 32))
# syndrome -> data bit index, -1 for check-bit positions, -2 for invalid syndromes (> 71)
_SYN_TO_DATA = np.full(128, -2, np.int32)
_SYN_TO_DATA[0] = -1
for _i in range(7):
    _SYN_TO_DATA[1 << _i] = -1
for _j, _p in enumerate(_DATA_POS):
    _SYN_TO_DATA[_p] = _j


def _pack(g):
    lo = (g[..., 0] >> 16) | (g[..., 1] & BF16_MASK)
    hi = (g[..., 2] >> 16) | (g[..., 3] & BF16_MASK)
    return lo, hi


def _parity32(x):
    return jax.lax.population_count(x) & U32(1)


def _hamming_checks(lo, hi):
    """7 Hamming check bits, stacked on the last axis."""
    return jnp.stack([_parity32(lo & U32(_MASK_LO[i])) ^ _parity32(hi & U32(_MASK_HI[i])) for i in range(7)], axis=-1)


@jax.jit
def encode_words(words: jax.Array) -> jax.Array:
    """Encode uint32 fp32 words (length a multiple of 4) into stored words; no checks (jittable)."""
    shape = words.shape
    g = (words & BF16_MASK).reshape(shape[:-1] + (-1, GROUP))
    lo, hi = _pack(g)
    c = _hamming_checks(lo, hi)                                     # (..., n, 7)
    overall = _parity32(lo) ^ _parity32(hi) ^ (jnp.sum(c, axis=-1, dtype=U32) & U32(1))
    c8 = jnp.concatenate([c, overall[..., None]], axis=-1)          # (..., n, 8)
    check_bits = (c8[..., 0::2] << 15) | (c8[..., 1::2] << 14)      # (..., n, 4): word k gets 2k, 2k+1
    return (g | check_bits).reshape(shape)


@jax.jit
def decode_with_status(words: jax.Array):
    """(decoded bf16-in-fp32 words, per-group status: 0 ok, 1 corrected, 2 detected uncorrectable)."""
    shape = words.shape
    g = words.reshape(shape[:-1] + (-1, GROUP))
    data = g & BF16_MASK
    lo, hi = _pack(data)
    stored = jnp.stack([(g >> 15) & U32(1), (g >> 14) & U32(1)], axis=-1).reshape(g.shape[:-1] + (8,))
    c = _hamming_checks(lo, hi)
    syn = jnp.sum((c ^ stored[..., :7]) << jnp.arange(7, dtype=U32), axis=-1, dtype=U32)
    odd = (_parity32(lo) ^ _parity32(hi) ^ (jnp.sum(stored, axis=-1, dtype=U32) & U32(1))) == 1
    j = jnp.asarray(_SYN_TO_DATA)[syn.astype(jnp.int32)]
    fix = odd & (j >= 0)
    k = jnp.arange(GROUP, dtype=jnp.int32)
    jj = jnp.maximum(j, 0)[..., None]
    flip = jnp.where(fix[..., None] & (jj // 16 == k), U32(1) << (16 + jj % 16).astype(U32), U32(0))
    out = data ^ flip
    uncorrectable = ((~odd) & (syn != 0)) | (odd & (j == -2))
    status = jnp.where(uncorrectable, 2, jnp.where(odd, 1, 0)).astype(jnp.int32)
    return out.reshape(shape), status


def decode_words(words: jax.Array) -> jax.Array:
    """Decoded words only (jittable)."""
    return decode_with_status(words)[0]


def _check(words):
    from jaxfault.ecc.sparrow import _check_words

    return _check_words(words, GROUP)


def encode(words) -> jax.Array:
    """SEC-DED-encode a 1-D uint32 array of fp32 words (length a multiple of 4)."""
    from jaxfault.core.bits import check_finite_words

    words = _check(words)
    check_finite_words(words, "words")
    return encode_words(words)


def decode(words) -> jax.Array:
    """SEC-DED-decode a 1-D uint32 array of stored words."""
    return decode_words(_check(words))
