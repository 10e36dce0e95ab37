"""Bit-level protection schemes for bf16 weights in HBM: Sparrow, SEC-DED (72,64), none.

A `Scheme` is a small value in the optax spirit: pure jittable `encode`/`decode` on uint32 word
arrays (..., n) with n a multiple of `group`, the `stored_mask` of bit cells a stored word
occupies (the only cells faults may hit) and `stored_bits` = popcount(stored_mask) per weight.
Schemes are built by name from the `SCHEMES` registry, whose entries also say which block sizes
a scheme takes; the CLIs, campaigns and the energy-of-protection code read the registry, so a
new scheme is one module with one `register_scheme` call (docs/extending.md).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxfault.core.bits import BF16_MASK
from jaxfault.ecc import hamming, secded, sparrow  # noqa: F401
from jaxfault.core.errors import JaxfaultError
from jaxfault.core.protocol import Registry


class Scheme(NamedTuple):
    name: str
    block_size: int
    group: int                         # encode/decode need lengths that are multiples of this
    stored_mask: int                   # stored bit cells of an encoded uint32 word
    stored_bits: int                   # popcount(stored_mask)
    encode: Callable[[jax.Array], jax.Array]
    decode: Callable[[jax.Array], jax.Array]


SCHEMES = Registry("ECC scheme")


def register_scheme(name: str, factory: Callable[..., Scheme], *, block_sizes: tuple | None = None,
                    description: str = "") -> None:
    """Register factory(block_size=..., compat=...) -> Scheme under `name`.

    block_sizes: the block sizes the scheme accepts (None: it ignores block_size).
    """
    SCHEMES.register(name, factory, block_sizes=block_sizes, description=description)


def scheme_names() -> tuple[str, ...]:
    """Registered scheme names, in registration order."""
    return SCHEMES.names()


def check_scheme_block_size(name: str, block_size) -> int:
    """The block size a scheme will use: validated for schemes that take one."""
    sizes = SCHEMES.get(name).info["block_sizes"]
    if sizes is None:
        return int(block_size) if isinstance(block_size, int) and not isinstance(block_size, bool) else 64
    if isinstance(block_size, bool) or block_size not in sizes:
        raise JaxfaultError(f"block_size for scheme {name!r} must be one of {', '.join(map(str, sizes))}, "
                            f"got {block_size!r}")
    return int(block_size)


def get_scheme(name: str, block_size: int = 64, *, compat: bool = False) -> Scheme:
    """Scheme by registered name ('sparrow' takes block_size 16/32/64; 'secded' and 'none' ignore it)."""
    block_size = check_scheme_block_size(name, block_size)
    return SCHEMES.build(name, block_size=block_size, compat=compat)


def stored_bits_per_weight(name: str, block_size: int = 64) -> int:
    """Stored bits per 16-bit weight of a scheme (its storage overhead is this / 16 - 1)."""
    return get_scheme(name, block_size).stored_bits


def _sparrow(block_size: int = 64, compat: bool = False) -> Scheme:
    B = sparrow.check_block_size(block_size)
    return Scheme("sparrow", B, B, sparrow.stored_mask(B), sparrow.stored_bits(B),
                  lambda w: sparrow.encode_blocks(w, B, compat), lambda w: sparrow.decode_blocks(w, B))


def _secded(block_size: int = 64, compat: bool = False) -> Scheme:
    return Scheme("secded", secded.GROUP, secded.GROUP, secded.STORED_MASK, secded.STORED_BITS,
                  secded.encode_words, secded.decode_words)


def _bf16_only(w):
    return w & jnp.uint32(BF16_MASK)


def _none(block_size: int = 64, compat: bool = False) -> Scheme:
    return Scheme("none", 1, 1, int(BF16_MASK), 16, _bf16_only, _bf16_only)


register_scheme("sparrow", _sparrow, block_sizes=sparrow.BLOCK_SIZES,
                description="exponent-aware ECC: sign x3, Hamming(7,4) exponent difference, shared max_e")
register_scheme("secded", _secded, description="(72,64) SEC-DED over 4 bf16 words")
register_scheme("none", _none, description="plain bf16, no protection")
