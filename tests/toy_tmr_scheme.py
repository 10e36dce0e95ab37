"""A toy ECC scheme registered from outside the library: triple-modular redundancy of the
exponent bits (docs/extending.md). Stored word: the bf16 value in bits 31..16 and two extra
copies of its 8 exponent bits in bits 15..8 and 7..0 (32 stored bits per weight); decoding takes
the bitwise majority of the three exponent copies."""
import jax.numpy as jnp

from jaxfault.ecc import Scheme, register_scheme

U32 = jnp.uint32


def encode(w):
    w = w & U32(0xFFFF0000)
    e = (w >> 23) & U32(0xFF)
    return w | (e << 8) | e


def decode(w):
    a, b, c = (w >> 23) & U32(0xFF), (w >> 8) & U32(0xFF), w & U32(0xFF)
    e = (a & b) | (a & c) | (b & c)
    return (w & U32(0x807F0000)) | (e << 23)


def tmr_exponent(block_size: int = 64, compat: bool = False) -> Scheme:
    return Scheme("tmr", 1, 1, 0xFFFFFFFF, 32, encode, decode)


register_scheme("tmr", tmr_exponent, description="toy: triple-modular redundancy of the exponent bits")
