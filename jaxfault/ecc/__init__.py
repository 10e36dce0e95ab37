"""Bit-level protection schemes on uint32 word arrays: Sparrow, SEC-DED (72,64), and none.

`get_scheme(name, block_size)` returns a Scheme whose encode/decode are pure jittable functions on
uint32 arrays (..., n) with n a multiple of `scheme.group`, and whose `stored_mask` names the
stored bit cells (the only cells that faults may hit).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxfault.ecc import hamming, secded, sparrow  # noqa: F401
from jaxfault.errors import JaxfaultError

SCHEMES = ("sparrow", "secded", "none")


class Scheme(NamedTuple):
    name: str
    block_size: int
    group: int                         # encode/decode need lengths that are multiples of this
    stored_mask: int                   # stored bit cells of an encoded uint32 word
    stored_bits: int                   # popcount(stored_mask)
    encode: Callable[[jax.Array], jax.Array]
    decode: Callable[[jax.Array], jax.Array]


def _none_encode(w):
    return w & jnp.uint32(0xFFFF0000)


def get_scheme(name: str, block_size: int = 64, *, compat: bool = False) -> Scheme:
    """Scheme by name: 'sparrow' (block_size 16/32/64), 'secded' ((72,64) over 4 bf16 words),
    'none' (plain bf16, 16 stored bits)."""
    if name == "sparrow":
        B = sparrow.check_block_size(block_size)
        return Scheme("sparrow", B, B, sparrow.stored_mask(B), sparrow.stored_bits(B),
                      lambda w: sparrow.encode_blocks(w, B, compat), lambda w: sparrow.decode_blocks(w, B))
    if name == "secded":
        return Scheme("secded", secded.GROUP, secded.GROUP, secded.STORED_MASK, secded.STORED_BITS,
                      secded.encode_words, secded.decode_words)
    if name == "none":
        return Scheme("none", 1, 1, 0xFFFF0000, 16, _none_encode, _none_encode)
    raise JaxfaultError(f"unknown scheme {name!r}; choose one of {', '.join(SCHEMES)}")


def stored_bit_positions(mask: int) -> tuple:
    """Bit numbers set in mask, MSB first."""
    return tuple(b for b in range(31, -1, -1) if (mask >> b) & 1)
