"""Protection of stored words of any number format (jaxfault.core.formats): a second scheme registry.

The bf16 schemes of :mod:`jaxfault.ecc` (``sparrow``, ``secded``, ``none``) work on bf16 words
and stay as published. The schemes here work on the element words of any format (``bits`` wide,
one per uint32) and, for MX formats, on the E8M0 scale bytes as a second stream. Each scheme is
a :class:`FormatScheme`: it declares the formats it protects (``supports``), its stored bits per
element (``stored_bits``), and turns one stream of words into :class:`jaxfault.faults.stored.Region`
values (``encode``) and back (``decode``, returning the corrected words and the number of
codewords it corrected and detected as uncorrectable).

* ``none``: the words as they are (every format).
* ``secded``: an extended Hamming (72,64) code over the stream's bits: the words of a stream are
  read as one bit sequence (word 0's bit 0 first), cut into 64-bit groups (the last one
  zero-padded); each group gets 8 check bits (:mod:`jaxfault.ecc.secded`'s code: check bits at
  Hamming positions 1, 2, 4, ..., 64, the overall parity last), stored as one 8-bit word per
  group in a region of its own. The element words are stored unchanged. Corrects any single
  error in a group's 72 bits, detects double errors. Every format.
* ``exp-secded``: the same (72,64) code over the exponent bits only (float elements' exponent
  fields, every bit of an MX scale): the sign and mantissa stay unprotected. Formats with an
  exponent (floats, MX floats; for mxint8 only its scales have one, so it is not supported).
* ``mset``: the most significant exponent bit of each element (and bit 7 of each MX scale) is
  stored three times (two copies in bits ``bits`` and ``bits + 1`` of the word) and read by
  majority vote, the MSET protection of FaultForge: the bit whose flip turns a small weight into
  a huge one is the one protected. Formats with an exponent.

Energy: ``stored_bits`` per element feeds :func:`energy_stored_bits`, the stored bits per
16-bit weight that :mod:`jaxfault.energy.protection` prices.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxfault.core import formats as FM
from jaxfault.ecc import secded as _sd
from jaxfault.core.errors import JaxfaultError
from jaxfault.faults.stored import Region, roles_table
from jaxfault.core.protocol import Registry

U32 = jnp.uint32
FORMAT_SCHEMES = Registry("format protection scheme")


def has_exponent(fmt: FM.NumberFormat) -> bool:
    """True for formats whose elements have an exponent field."""
    return "exponent" in fmt.element_roles


def _protected_bits(roles: tuple, which: str) -> tuple[int, ...]:
    """Bit numbers of a stream's words that a scheme protects ('all', 'exponent', 'msb-exponent')."""
    if which == "all":
        return tuple(range(len(roles)))
    exp = tuple(b for b, r in enumerate(roles) if r in ("exponent", "scale"))
    return exp if which == "exponent" else exp[-1:]


# ------------------------------------------------------------------------------ bit streams
def _to_stream(words, bits: tuple[int, ...]):
    """The chosen bits of every word as one 0/1 sequence, word-major, zero-padded to a multiple
    of 64, as (groups, 2) uint32 (lo = stream bits 0..31, hi = 32..63)."""
    b = jnp.asarray(bits, U32)
    cells = ((words[:, None] >> b[None, :]) & U32(1)).reshape(-1)
    n = cells.shape[0]
    g = max(1, -(-n // 64))
    cells = jnp.pad(cells, (0, g * 64 - n)).reshape(g, 2, 32)
    return jnp.sum(cells << jnp.arange(32, dtype=U32), axis=-1, dtype=U32)


def _from_stream(words, bits: tuple[int, ...], packed):
    """Write the stream back into the chosen bits of words (inverse of _to_stream)."""
    n_words = words.shape[0]
    cells = ((packed[..., None] >> jnp.arange(32, dtype=U32)) & U32(1)).reshape(-1)[:n_words * len(bits)]
    cells = cells.reshape(n_words, len(bits))
    b = jnp.asarray(bits, U32)
    keep = U32(~sum(1 << x for x in bits) & 0xFFFFFFFF)
    return (words & keep) | jnp.sum(cells << b[None, :], axis=-1, dtype=U32)


def _check_byte(lo, hi):
    c = _sd._hamming_checks(lo, hi)                                           # (g, 7)
    overall = _sd._parity32(lo) ^ _sd._parity32(hi) ^ (jnp.sum(c, axis=-1, dtype=U32) & U32(1))
    return jnp.sum(jnp.concatenate([c, overall[:, None]], axis=-1) << jnp.arange(8, dtype=U32), axis=-1, dtype=U32)


def secded_encode_stream(words, bits: tuple[int, ...]):
    """8 check bits (one uint32 word each, low byte) per 64-bit group of the stream."""
    packed = _to_stream(words, bits)
    return _check_byte(packed[:, 0], packed[:, 1])


def secded_decode_stream(words, bits: tuple[int, ...], checks):
    """(corrected words, n corrected groups, n detected-uncorrectable groups)."""
    packed = _to_stream(words, bits)
    lo, hi = packed[:, 0], packed[:, 1]
    stored = (checks[:, None] >> jnp.arange(8, dtype=U32)) & U32(1)
    c = _sd._hamming_checks(lo, hi)
    syn = jnp.sum((c ^ stored[:, :7]) << jnp.arange(7, dtype=U32), axis=-1, dtype=U32)
    odd = (_sd._parity32(lo) ^ _sd._parity32(hi) ^ (jnp.sum(stored, axis=-1, dtype=U32) & U32(1))) == 1
    j = jnp.asarray(_sd._SYN_TO_DATA)[syn.astype(jnp.int32)]
    fix = odd & (j >= 0)
    jj = jnp.maximum(j, 0)
    lo = lo ^ jnp.where(fix & (jj < 32), U32(1) << (jj % 32).astype(U32), U32(0))
    hi = hi ^ jnp.where(fix & (jj >= 32), U32(1) << (jj % 32).astype(U32), U32(0))
    bad = ((~odd) & (syn != 0)) | (odd & (j == -2))
    fixed = _from_stream(words, bits, jnp.stack([lo, hi], axis=-1))
    return fixed, jnp.sum(odd & ~bad, dtype=jnp.int32), jnp.sum(bad, dtype=jnp.int32)


# ------------------------------------------------------------------------------ the protocol
@dataclasses.dataclass(frozen=True)
class FormatScheme:
    """A protection scheme over streams of format words (see the module docstring)."""

    name: str
    protects: str            # 'none', 'all', 'exponent' or 'msb-exponent'
    code: str                # 'none', 'secded' or 'triplicate'
    needs_exponent: bool
    description: str = ""

    def supports(self, fmt) -> bool:
        """Whether the scheme protects this format."""
        fmt = FM.get(fmt)
        return not self.needs_exponent or has_exponent(fmt)

    def check_format(self, fmt) -> FM.NumberFormat:
        """The format, or a one-line JaxfaultError for an unsupported format x scheme pair."""
        fmt = FM.get(fmt)
        if not self.supports(fmt):
            ok = [n for n in FM.names() if self.supports(n)]
            raise JaxfaultError(f"scheme {self.name!r} protects exponent bits and format {fmt.name!r} has none; "
                                f"formats it supports: {', '.join(ok)}")
        return fmt

    def _bits(self, roles: tuple) -> tuple[int, ...]:
        return () if self.code == "none" else _protected_bits(roles, self.protects)

    def stream_stored_bits(self, n_words: int, roles: tuple) -> int:
        """Stored cells of a stream of n_words words with the given roles."""
        base = n_words * len(roles)
        prot = self._bits(roles)
        if self.code == "secded":
            return base + 8 * max(1, -(-n_words * len(prot) // 64))
        if self.code == "triplicate":
            return base + 2 * n_words * len(prot)
        return base

    def stored_bits(self, fmt) -> float:
        """Stored bits per element, scales and check bits included (amortised over a long
        array; an MX scale counts 8 / 32 bits per element)."""
        fmt = self.check_format(fmt)
        n = 64 * 32 * 3
        cells = self.stream_stored_bits(n, fmt.element_roles)
        if fmt.kind == "mx":
            cells += self.stream_stored_bits(n // fmt.block, fmt.scale_roles)
        return cells / n

    def encode(self, words, roles: tuple, start: int = 0) -> list[Region]:
        """The stored regions of one stream (words: 1-D uint32, roles: one per stored bit)."""
        words = jnp.asarray(words, U32)
        bits = self._bits(roles)
        width = len(roles)
        if self.code == "triplicate":
            b = bits[0]
            bit = (words >> U32(b)) & U32(1)
            stored = words | (bit << U32(width)) | (bit << U32(width + 1))
            return [Region(stored, (1 << (width + 2)) - 1, roles_table(tuple(roles) + ("copy", "copy")), start)]
        region = Region(words, (1 << width) - 1, roles_table(roles), start)
        if self.code == "none":
            return [region]
        checks = secded_encode_stream(words, bits)
        return [region, Region(checks, 0xFF, roles_table(("check",) * 8), 0)]

    def decode(self, regions: list, roles: tuple):
        """(words, n corrected, n detected uncorrectable) from the (faulty) words of encode's regions."""
        width = len(roles)
        low = U32((1 << width) - 1)
        zero = jnp.int32(0)
        if self.code == "none":
            return regions[0] & low, zero, zero
        bits = self._bits(roles)
        if self.code == "triplicate":
            w = regions[0]
            b = bits[0]
            votes = ((w >> U32(b)) & U32(1)) + ((w >> U32(width)) & U32(1)) + ((w >> U32(width + 1)) & U32(1))
            bit = (votes >= 2).astype(U32)
            fixed = (w & low & ~U32(1 << b)) | (bit << U32(b))
            corrected = jnp.sum(fixed != (w & low), dtype=jnp.int32)
            return fixed, corrected, zero
        return secded_decode_stream(regions[0] & low, bits, regions[1] & U32(0xFF))


def register_format_scheme(scheme: FormatScheme) -> None:
    """Add a scheme to the FORMAT_SCHEMES registry under its name."""
    FORMAT_SCHEMES.register(scheme.name, lambda: scheme, description=scheme.description)


def get_format_scheme(name: str) -> FormatScheme:
    """A format protection scheme by name (one-line error listing the names otherwise)."""
    return FORMAT_SCHEMES.build(name)


def format_scheme_names() -> tuple[str, ...]:
    """Registered format scheme names."""
    return FORMAT_SCHEMES.names()


def check_pair(scheme: str, fmt) -> tuple[FormatScheme, FM.NumberFormat]:
    """(scheme, format) validated together: one-line errors for bad names and unsupported pairs."""
    s = get_format_scheme(scheme)
    return s, s.check_format(FM.get(fmt))


def energy_stored_bits(scheme: str, fmt) -> float:
    """Stored bits per 16-bit weight equivalent of a format under a scheme, for
    :func:`jaxfault.energy.protection.weight_storage_bits` with ``qw = fmt.bits`` (its
    ``stored_bits / 16`` factor is then the scheme's overhead over the format's own bits)."""
    s, f = check_pair(scheme, fmt)
    return 16.0 * s.stored_bits(f) / f.bits


for _s in (FormatScheme("none", "none", "none", False, "the words as stored, no protection"),
           FormatScheme("secded", "all", "secded", False, "(72,64) SEC-DED over the stream's bits"),
           FormatScheme("exp-secded", "exponent", "secded", True, "(72,64) SEC-DED over the exponent bits only"),
           FormatScheme("mset", "msb-exponent", "triplicate", True,
                        "most significant exponent bit stored three times, majority vote")):
    register_format_scheme(_s)

