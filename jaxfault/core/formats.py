"""Stored number formats: what a weight looks like in memory, bit by bit.

A :class:`NumberFormat` is a frozen value with three pure, jittable functions and a table of bit
roles:

* ``quantize(x)``: the float32 values the format stores for float32 ``x``;
* ``encode(x)``: the stored words, a :class:`Stored` pytree of uint32 arrays (each element's
  code in the low ``bits`` bits of one word; MX shared scales in ``scales``);
* ``decode(stored)``: float32 values of stored words (``decode(encode(x)) == quantize(x)`` bit
  for bit);
* ``element_roles`` / ``scale_roles``: the role of every stored bit, indexed by bit number
  (0 = least significant): ``"sign"``, ``"exponent"``, ``"mantissa"`` (floats), ``"magnitude"``
  (two's-complement integers) and ``"scale"`` (the E8M0 shared exponent of an MX block).

Formats, built by :func:`get`:

* ``float32``, ``float16``, ``bfloat16``, ``float8_e4m3fn``, ``float8_e5m2``: scalar floats with
  ml_dtypes' semantics: round to nearest, ties to even, gradual underflow; overflow gives
  infinity (float16, bfloat16, float8_e5m2) or NaN (float8_e4m3fn, which has no infinity). No
  saturation: a value that rounds above the largest finite number is not clamped.
* ``int4``, ``int8``, ``int16`` (per tensor) and ``int4_per_channel``, ``int8_per_channel``,
  ``int16_per_channel`` (one step per output channel, the last axis of a Flax kernel): symmetric
  two's-complement integers, ``step = max|W| / (2^(b-1) - 1)``, ``q = round(W / step)`` half to
  even, exactly :func:`jaxfault.core.quant.quantize` per tensor. The float32 step is kept in
  ``scales`` (as its bit pattern) but is not part of the faulted weight memory
  (``scale_in_memory`` is False): it lives with the layer's configuration.
* ``mxfp8_e4m3``, ``mxfp8_e5m2``, ``mxfp6_e3m2``, ``mxfp6_e2m3``, ``mxfp4_e2m1``, ``mxint8``:
  OCP Microscaling v1.0. The last axis is cut into blocks of 32 (the last block may be
  shorter). A block's shared scale is ``2^s`` with ``s = floor(log2(max|V|)) - emax`` (``emax``
  the exponent of the element format's largest normal number; an all-zero block takes
  ``max|V| = 2^-126``), clamped to [-127, 127] and stored as the E8M0 byte ``s + 127`` (255 is
  NaN). Each element ``V / 2^s`` is rounded to the element format (nearest, ties to even,
  subnormals kept) and saturated to its largest finite magnitude. MXINT8 elements are 8-bit
  two's complement with an implicit 2^-6 (values k / 64), saturated to +-127/64; the code 0x80
  decodes to -2. A block holding NaN or Inf gets the NaN scale and decodes to NaN.

Inputs are float32 (other float dtypes are converted first). All arithmetic is on integer bit
patterns, so no float rounding, flushing of subnormals or fast-math rewrite can change a result.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault.core.errors import JaxfaultError, nearest_hint

U32 = jnp.uint32
I32 = jnp.int32
MX_BLOCK = 32
SCALE_BITS = 8
SCALE_BIAS = 127
SCALE_NAN = 0xFF
ROLES = ("sign", "exponent", "mantissa", "magnitude", "scale")


class Stored(NamedTuple):
    """The stored words of one array: ``elements`` (uint32, the input's shape, one code per
    word in the low bits) and ``scales`` (uint32: MX E8M0 bytes of shape (..., blocks), the
    float32 step's bit pattern of an integer format, or an empty array)."""

    elements: jax.Array
    scales: jax.Array


@dataclasses.dataclass(frozen=True)
class NumberFormat:
    """A stored number format (build with :func:`get`). ``kind`` is ``"float"``, ``"int"`` or
    ``"mx"``; ``bits`` the stored bits of one element; ``ebits``/``mbits``/``bias`` the element's
    exponent field, stored mantissa bits and exponent bias (floats and MX floats);
    ``specials``: ``"ieee"`` (all-ones exponent is Inf/NaN), ``"fn"`` (only the all-ones code is
    NaN) or ``"none"``; ``saturate``: clamp to the largest finite magnitude instead of
    overflowing; ``per_channel``: integer steps per output channel; ``block``: MX block length."""

    name: str
    kind: str
    bits: int
    ebits: int = 0
    mbits: int = 0
    bias: int = 0
    specials: str = "none"
    saturate: bool = False
    per_channel: bool = False
    block: int = 0

    # ------------------------------------------------------------------ static description
    @property
    def scale_bits(self) -> int:
        """Stored bits of one shared scale (8 for MX, 0 otherwise)."""
        return SCALE_BITS if self.kind == "mx" else 0

    @property
    def scale_in_memory(self) -> bool:
        """True when the scales are stored with the elements (and so exposed to faults)."""
        return self.kind == "mx"

    @property
    def element_mask(self) -> int:
        """Stored cells of one element word (the low ``bits`` bits)."""
        return (1 << self.bits) - 1

    @property
    def element_roles(self) -> tuple[str, ...]:
        """Role of element bit b (0 = least significant)."""
        if self.kind == "int" or self.name == "mxint8":
            return ("magnitude",) * (self.bits - 1) + ("sign",)
        return ("mantissa",) * self.mbits + ("exponent",) * self.ebits + ("sign",)

    @property
    def scale_roles(self) -> tuple[str, ...]:
        """Role of scale bit b (the E8M0 exponent of an MX block); empty for other formats."""
        return ("scale",) * self.scale_bits

    def bit_labels(self) -> list[tuple[str, int, str]]:
        """(field, bit, label) of every stored bit, most significant first: field is
        ``"element"`` or ``"scale"``, label e.g. ``"sign"``, ``"exp4"`` (exponent bit 4 counted
        from its least significant bit), ``"man0"``, ``"mag6"``, ``"scale7"``."""
        out = []
        counts = {}
        short = {"exponent": "exp", "mantissa": "man", "magnitude": "mag", "scale": "scale"}
        for field, roles in (("element", self.element_roles), ("scale", self.scale_roles)):
            counts.clear()
            labels = []
            for b, role in enumerate(roles):
                i = counts.get(role, 0)
                counts[role] = i + 1
                labels.append((field, b, "sign" if role == "sign" else f"{short[role]}{i}"))
            out.extend(reversed(labels))
        return out

    @property
    def emax(self) -> int:
        """Exponent of the largest normal element (MX: the offset of the shared exponent)."""
        if self.name == "mxint8":
            return 0
        top = (1 << self.ebits) - 1
        if self.specials == "ieee":
            top -= 1
        return top - self.bias

    @property
    def max_finite(self) -> float:
        """Largest finite element magnitude."""
        if self.kind == "int":
            return float(2 ** (self.bits - 1) - 1)
        if self.name == "mxint8":
            return 127 / 64
        if self.name == "float32":
            return float(np.finfo(np.float32).max)
        m = (1 << self.mbits) - 1
        if self.specials == "fn":
            m -= 1
        return float((1 + m / 2 ** self.mbits) * 2.0 ** self.emax)

    def describe(self) -> dict:
        """JSON-ready description."""
        return {"format": self.name, "kind": self.kind, "bits": self.bits, "scale_bits": self.scale_bits,
                "block": self.block or None}

    # ------------------------------------------------------------------ the three functions
    def quantize(self, x) -> jax.Array:
        """float32 values as stored (see the module docstring for each kind's rounding)."""
        return _quantize(self, _as_f32(x))

    def encode(self, x) -> Stored:
        """The stored words of float32 ``x`` (:class:`Stored`)."""
        return _encode(self, _as_f32(x))

    def decode(self, stored: Stored) -> jax.Array:
        """float32 values of stored words (any word values: faulty words decode too)."""
        return _decode(self, Stored(jnp.asarray(stored.elements, U32), jnp.asarray(stored.scales, U32)))

    def _quantize(self, x):
        if self.name == "float32":
            return x
        if self.kind == "int":
            q, step = _int_quantize(x, self.bits, self.per_channel)
            return q.astype(jnp.float32) * step
        if self.kind == "float":
            s, r, qe, special = _round_float(x, self, 0)
            return _assemble(s, r, qe, special)
        s, r, qe, special, shared = _round_mx(x, self)
        return _assemble(s, r, qe + _expand(shared, x.shape, self.block), special)

    def _encode(self, x):
        if self.name == "float32":
            return Stored(jax.lax.bitcast_convert_type(x, U32), jnp.zeros((0,), U32))
        if self.kind == "int":
            q, step = _int_quantize(x, self.bits, self.per_channel)
            words = (q & I32(self.element_mask)).astype(U32)
            return Stored(words, jax.lax.bitcast_convert_type(jnp.asarray(step, jnp.float32), U32))
        if self.kind == "float":
            s, r, qe, special = _round_float(x, self, 0)
            return Stored(_float_codes(s, r, qe, special, self), jnp.zeros((0,), U32))
        s, r, qe, special, shared = _round_mx(x, self)
        if self.name == "mxint8":
            q = jnp.where(s == 1, -r.astype(I32), r.astype(I32))
            codes = (q & I32(0xFF)).astype(U32)
        else:
            codes = _float_codes(s, r, qe, special, self)
        scales = jnp.where(shared == _NAN_SHARED, U32(SCALE_NAN), (shared + SCALE_BIAS).astype(U32))
        return Stored(codes, scales)

    def _decode(self, stored):
        el = stored.elements
        if self.name == "float32":
            return jax.lax.bitcast_convert_type(el, jnp.float32)
        if self.kind == "int":
            step = jax.lax.bitcast_convert_type(jnp.asarray(stored.scales, U32), jnp.float32)
            return _sign_extend(el, self.bits).astype(jnp.float32) * step
        if self.kind == "float":
            s, r, qe, special = _float_fields(el, self)
            return _assemble(s, r, qe, special)
        sc = jnp.asarray(stored.scales, U32) & U32(0xFF)
        shared = jnp.where(sc == SCALE_NAN, _NAN_SHARED, sc.astype(I32) - SCALE_BIAS)
        if self.name == "mxint8":
            q = _sign_extend(el, 8)
            s = (q < 0).astype(U32)
            r = jnp.abs(q).astype(U32)
            qe = jnp.full(el.shape, -6, I32)
            special = jnp.zeros(el.shape, I32)
        else:
            s, r, qe, special = _float_fields(el, self)
        full = _expand(shared, el.shape, self.block)
        special = jnp.where(full == _NAN_SHARED, _SPECIAL_NAN, special)
        return _assemble(s, r, qe + jnp.where(full == _NAN_SHARED, 0, full), special)

    def n_scales(self, shape) -> int:
        """Stored scales of an array of this shape (MX: blocks along the last axis)."""
        if self.kind != "mx":
            return 0
        shape = tuple(shape) or (1,)
        return int(np.prod(shape[:-1], dtype=np.int64)) * -(-shape[-1] // self.block)


_quantize = jax.jit(NumberFormat._quantize, static_argnums=0)
_encode = jax.jit(NumberFormat._encode, static_argnums=0)
_decode = jax.jit(NumberFormat._decode, static_argnums=0)


# ---------------------------------------------------------------------------------- registry
_FLOATS = {
    "float32": dict(bits=32, ebits=8, mbits=23, bias=127, specials="ieee"),
    "float16": dict(bits=16, ebits=5, mbits=10, bias=15, specials="ieee"),
    "bfloat16": dict(bits=16, ebits=8, mbits=7, bias=127, specials="ieee"),
    "float8_e4m3fn": dict(bits=8, ebits=4, mbits=3, bias=7, specials="fn"),
    "float8_e5m2": dict(bits=8, ebits=5, mbits=2, bias=15, specials="ieee"),
}
_MX = {
    "mxfp8_e4m3": dict(bits=8, ebits=4, mbits=3, bias=7, specials="fn"),
    "mxfp8_e5m2": dict(bits=8, ebits=5, mbits=2, bias=15, specials="ieee"),
    "mxfp6_e3m2": dict(bits=6, ebits=3, mbits=2, bias=3, specials="none"),
    "mxfp6_e2m3": dict(bits=6, ebits=2, mbits=3, bias=1, specials="none"),
    "mxfp4_e2m1": dict(bits=4, ebits=2, mbits=1, bias=1, specials="none"),
    "mxint8": dict(bits=8),
}
_INTS = {f"int{b}": b for b in (4, 8, 16)}


def _build(name: str) -> NumberFormat:
    if name in _FLOATS:
        return NumberFormat(name, "float", **_FLOATS[name])
    if name in _MX:
        return NumberFormat(name, "mx", saturate=True, block=MX_BLOCK, **_MX[name])
    base, _, tail = name.partition("_")
    if base in _INTS and tail in ("", "per_channel"):
        return NumberFormat(name, "int", bits=_INTS[base], per_channel=bool(tail))
    raise KeyError(name)


FORMAT_NAMES = (*_FLOATS, *(f"{n}{t}" for n in _INTS for t in ("", "_per_channel")), *_MX)


def names() -> tuple[str, ...]:
    """Every format name :func:`get` accepts."""
    return FORMAT_NAMES


def get(name) -> NumberFormat:
    """The number format called ``name`` (one of :func:`names`); a NumberFormat is returned as is.

    Args:
      name: a format name such as ``"float8_e4m3fn"``, ``"int8_per_channel"`` or ``"mxfp4_e2m1"``.
    Returns:
      the frozen :class:`NumberFormat`.
    """
    if isinstance(name, NumberFormat):
        return name
    if not isinstance(name, str) or name not in FORMAT_NAMES:
        raise JaxfaultError(f"unknown number format {name!r}{nearest_hint(name, FORMAT_NAMES)}; "
                            f"choose one of {', '.join(FORMAT_NAMES)}")
    return _build(name)


# ---------------------------------------------------------------------------- integer cores
_SPECIAL_NONE, _SPECIAL_INF, _SPECIAL_NAN = 0, 1, 2
_NAN_SHARED = I32(-(1 << 20))          # marks a NaN block scale inside the computation


def _as_f32(x) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise JaxfaultError(f"a number format quantizes floating-point arrays, got dtype {x.dtype}")
    return x.astype(jnp.float32)


def _split(x):
    """float32 -> (sign, significand, exponent of its last bit, special) with |x| = sig * 2^exp2."""
    u = jax.lax.bitcast_convert_type(x, U32)
    s = u >> 31
    biased = ((u >> 23) & U32(0xFF)).astype(I32)
    frac = u & U32(0x7FFFFF)
    sig = jnp.where(biased > 0, frac | U32(1 << 23), frac)
    exp2 = jnp.maximum(biased, 1) - 150
    special = jnp.where(biased == 255, jnp.where(frac == 0, _SPECIAL_INF, _SPECIAL_NAN), _SPECIAL_NONE)
    return s, sig, exp2, special.astype(I32)


def _log2_floor(sig, exp2):
    """floor(log2(sig * 2^exp2)) for sig > 0 (garbage for sig == 0)."""
    return exp2 + (31 - jax.lax.clz(sig).astype(I32))


def _shift_round(sig, shift):
    """round(sig / 2^shift) half to even for shift > 0, sig * 2^-shift for shift <= 0 (uint32)."""
    right = jnp.clip(shift, 0, 31).astype(U32)
    left = jnp.clip(-shift, 0, 31).astype(U32)
    q = sig >> right
    rem = sig - (q << right)
    half = jnp.where(right > 0, U32(1) << jnp.maximum(right, U32(1)) - U32(1), U32(0))
    up = (right > 0) & ((rem > half) | ((rem == half) & ((q & U32(1)) == 1)))
    rounded = q + up.astype(U32)
    return jnp.where(shift > 0, rounded, sig << left)


def _round_grid(sig, exp2, mbits: int, emin: int):
    """Round sig * 2^exp2 to a float grid with mbits stored mantissa bits and minimum normal
    exponent emin: (r, qe) with value r * 2^qe, r < 2^(mbits + 1)."""
    e = _log2_floor(jnp.maximum(sig, U32(1)), exp2)
    qe = jnp.maximum(e, emin) - mbits
    r = _shift_round(sig, qe - exp2)
    carry = r >= U32(1 << (mbits + 1))
    r = jnp.where(carry, r >> 1, r)
    qe = jnp.where(carry, qe + 1, qe)
    r = jnp.where(sig == 0, U32(0), r)
    return r, qe


def _overflow(r, qe, fmt: NumberFormat, special):
    """Apply the format's largest finite value: saturate, or mark Inf / NaN."""
    mb = fmt.mbits
    emax = fmt.emax
    top_m = (1 << mb) - 1 - (1 if fmt.specials == "fn" else 0)
    e_val = qe + mb                                                    # exponent of a normal r
    too_big = (r > 0) & ((e_val > emax) | ((e_val == emax) & (r > U32((1 << mb) + top_m))))
    if fmt.saturate:
        r = jnp.where(too_big, U32((1 << mb) + top_m), r)
        qe = jnp.where(too_big, emax - mb, qe)
    else:
        over = _SPECIAL_INF if fmt.specials == "ieee" else _SPECIAL_NAN
        special = jnp.where(too_big & (special == _SPECIAL_NONE), over, special)
    return r, qe, special


def _round_float(x, fmt: NumberFormat, offset):
    """(sign, r, qe, special) of x * 2^-offset rounded to the scalar float format fmt."""
    s, sig, exp2, special = _split(x)
    r, qe = _round_grid(sig, exp2 - offset, fmt.mbits, 1 - fmt.bias)
    if fmt.specials == "fn":
        special = jnp.where(special == _SPECIAL_INF, _SPECIAL_NAN, special)
    r, qe, special = _overflow(r, qe, fmt, special)
    return s, r, qe, special


def _blocks(x, block: int):
    """x (..., n) -> (..., nb, block) zero-padded, with n."""
    x = jnp.atleast_1d(x)
    n = x.shape[-1]
    nb = -(-n // block)
    pad = nb * block - n
    xp = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
    return xp.reshape(x.shape[:-1] + (nb, block)), n


def _expand(shared, shape, block: int):
    """Per-block values (..., nb) repeated over the block's elements -> shape."""
    shape = tuple(shape)
    n = shape[-1] if shape else 1
    full = jnp.repeat(shared, block, axis=-1)[..., :n]
    return full.reshape(shape)


def _round_mx(x, fmt: NumberFormat):
    """(sign, r, qe, special, shared) of the MX elements of x (qe relative to the block scale)."""
    xb, n = _blocks(x, fmt.block)
    s, sig, exp2, special = _split(xb)
    # max|V| on the bit patterns (ordered like the magnitudes), so that no float operation can
    # flush a subnormal maximum to zero
    mag = jax.lax.bitcast_convert_type(xb, U32) & U32(0x7FFFFFFF)
    top = jnp.max(jnp.where(special == _SPECIAL_NONE, mag, U32(0)), axis=-1)
    _, tsig, texp, _ = _split(jax.lax.bitcast_convert_type(top, jnp.float32))
    e_top = jnp.where(tsig == 0, -126, _log2_floor(jnp.maximum(tsig, U32(1)), texp))
    shared = jnp.clip(e_top - fmt.emax, -SCALE_BIAS, SCALE_BIAS).astype(I32)
    bad = jnp.any(special != _SPECIAL_NONE, axis=-1)
    full = jnp.repeat(shared, fmt.block, axis=-1).reshape(xb.shape)
    if fmt.name == "mxint8":
        r = _shift_round(sig, -6 - (exp2 - full))
        r = jnp.minimum(r, U32(127))
        s = jnp.where(r == 0, U32(0), s)                # two's complement has no -0
        qe = jnp.full(r.shape, -6, I32)
        sp = jnp.zeros(r.shape, I32)
    else:
        r, qe = _round_grid(sig, exp2 - full, fmt.mbits, 1 - fmt.bias)
        r, qe, sp = _overflow(r, qe, fmt, jnp.zeros(r.shape, I32))
    sp = jnp.where(bad[..., None], _SPECIAL_NAN, sp)
    shared = jnp.where(bad, _NAN_SHARED, shared)
    cut = lambda a: a.reshape(xb.shape[:-2] + (-1,))[..., :n].reshape(x.shape)  # noqa: E731
    return cut(s), cut(r), cut(qe), cut(sp), shared


def _assemble(s, r, qe, special):
    """float32 from sign, r * 2^qe and special (exact; Inf beyond float32's range)."""
    p = 31 - jax.lax.clz(jnp.maximum(r, U32(1))).astype(I32)
    e = qe + p
    normal = (((e + 127).astype(U32) << 23) | ((r << (23 - p).astype(U32)) & U32(0x7FFFFF)))
    sub_shift = qe + 149
    sub = jnp.where(sub_shift >= 0, r << jnp.clip(sub_shift, 0, 31).astype(U32),
                    _shift_round(r, -sub_shift))
    mag = jnp.where(e >= -126, normal, sub)
    mag = jnp.where(e > 127, U32(0x7F800000), mag)
    mag = jnp.where(r == 0, U32(0), mag)
    mag = jnp.where(special == _SPECIAL_INF, U32(0x7F800000), mag)
    mag = jnp.where(special == _SPECIAL_NAN, U32(0x7FC00000), mag)
    return jax.lax.bitcast_convert_type((s.astype(U32) << 31) | mag, jnp.float32)


def _float_codes(s, r, qe, special, fmt: NumberFormat):
    """Element codes of rounded values (normal, subnormal, Inf, NaN)."""
    mb, eb = fmt.mbits, fmt.ebits
    normal = r >= U32(1 << mb)
    e_field = jnp.where(normal, qe + mb + fmt.bias, 0).astype(U32)
    m_field = jnp.where(normal, r - U32(1 << mb), r)
    code = (e_field << mb) | m_field
    all_e = U32(((1 << eb) - 1) << mb)
    if fmt.specials == "ieee":
        code = jnp.where(special == _SPECIAL_INF, all_e, code)
        code = jnp.where(special == _SPECIAL_NAN, all_e | U32(1 << (mb - 1)), code)
    elif fmt.specials == "fn":
        code = jnp.where(special != _SPECIAL_NONE, U32((1 << (eb + mb)) - 1), code)
    return (s.astype(U32) << (eb + mb)) | code


def _float_fields(codes, fmt: NumberFormat):
    """(sign, r, qe, special) of element codes."""
    mb, eb = fmt.mbits, fmt.ebits
    c = codes & U32(fmt.element_mask)
    s = c >> (eb + mb)
    e_field = ((c >> mb) & U32((1 << eb) - 1)).astype(I32)
    m_field = c & U32((1 << mb) - 1)
    r = jnp.where(e_field > 0, m_field | U32(1 << mb), m_field)
    qe = jnp.maximum(e_field, 1) - fmt.bias - mb
    special = jnp.zeros(c.shape, I32)
    if fmt.specials == "ieee":
        top = e_field == (1 << eb) - 1
        special = jnp.where(top, jnp.where(m_field == 0, _SPECIAL_INF, _SPECIAL_NAN), special)
    elif fmt.specials == "fn":
        special = jnp.where((c & U32((1 << (eb + mb)) - 1)) == U32((1 << (eb + mb)) - 1), _SPECIAL_NAN, special)
    return s, r, qe, special


def _sign_extend(words, bits: int):
    shift = I32(32 - bits)
    return jax.lax.shift_right_arithmetic(jax.lax.shift_left(words.astype(I32), shift), shift)


def _int_quantize(x, bits: int, per_channel: bool):
    """(q int32, step float32 of shape () or (channels,)): jaxfault.core.quant's symmetric quantizer,
    per tensor or per channel of the last axis."""
    from jaxfault.core.quant import _true_divide

    qmax = 2 ** (bits - 1) - 1
    if per_channel and x.ndim >= 1:
        m = jnp.max(jnp.abs(x.reshape(-1, x.shape[-1])), axis=0)
    else:
        m = jnp.max(jnp.abs(x)) if x.size else jnp.float32(0)
    step = _true_divide(m.astype(jnp.float32), jnp.float32(qmax))
    step = jnp.where(step > 0, step, jnp.float32(1.0))
    q = jnp.round(_true_divide(jnp.clip(x, -m, m), jnp.broadcast_to(step, x.shape)))
    return jnp.clip(q, -qmax, qmax).astype(I32), step


PyTree = Any
