"""Sparrow ECC vs a plain numpy reference written from docs/sparrow.md ("The encoding, bit by bit"),
bit for bit."""
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxfault.ecc import sparrow
from jaxfault.core.errors import JaxfaultError

NBLOCKS = 2   # fixed shapes: one compilation per block size


# --------------------- reference, straight from the bit layout in docs/sparrow.md ---------------------
def ref_encode_block(words, B, compat):
    ws = [int(w) & 0xFFFF0000 for w in words]
    es = [(w >> 23) & 0xFF for w in ws]
    max_e = max(es)
    nonzero = [e for e in es if e != 0]
    min_e = min(nonzero) if nonzero else 255
    diff = max(max_e - min_e, 0)
    F = 1 if diff >= 16 else 0
    out = []
    for c, w in enumerate(ws):
        if F:
            w &= 0xFFFE0000
        if max_e - ((w >> 23) & 0xFF) >= 32:
            w = (w & 0x80000000) | (((max_e - 31) << 23) & 0xFFFFFFFF)
        d = max_e - ((w >> 23) & 0xFF)
        if not compat and F == 0 and d >= 16:        # jaxfault's clean choice for the zero quirk
            w &= 0x80000000
            d = 15
        s = w >> 31
        o = (s << 31) | (s << 30) | (s << 29)
        if F == 0:
            o |= d << 25                               # unmasked, as the reference
            o |= ((w >> 22) & 1) << 24
            o |= ((w >> 16) & 0x3F) << 15
        else:
            o |= d << 24
            o |= ((w >> 17) & 0x3F) << 15
        b0, b1, b2, b3 = ((o >> k) & 1 for k in (28, 27, 26, 25))
        o |= ((b0 ^ b1 ^ b3) << 23) | ((b0 ^ b2 ^ b3) << 22) | ((b1 ^ b2 ^ b3) << 21)
        if B in (32, 64):
            bit14 = F if c >= B - 8 else (max_e >> (7 - c % 8)) & 1
            o |= bit14 << 14
        else:
            bit14 = F if c >= 8 else (max_e >> (7 - c)) & 1
            o |= bit14 << 14
            o |= ((max_e >> (7 - c % 8)) & 1) << 13
        out.append(o & 0xFFFFFFFF)
    return out


def maj(bits):
    return 1 if 2 * sum(bits) > len(bits) else 0


def ref_decode_block(words, B):
    ws = [int(w) for w in words]
    b = lambda w, k: (w >> k) & 1  # noqa: E731
    if B == 64:
        max_bits = [maj([b(ws[c], 14) for c in range(56) if c % 8 == k]) for k in range(8)]
    elif B == 32:
        max_bits = [maj([b(ws[c], 14) for c in range(24) if c % 8 == k]) for k in range(8)]
    else:
        max_bits = [maj([b(ws[k], 14), b(ws[k], 13), b(ws[8 + k], 13)]) for k in range(8)]
    max_e = sum(bit << (7 - k) for k, bit in enumerate(max_bits))
    F = maj([b(ws[c], 14) for c in range(B - 8, B - 1)])
    out = []
    for w in ws:
        b0, b1, b2, b3 = (b(w, k) for k in (28, 27, 26, 25))
        p1, p2, p3 = b(w, 23), b(w, 22), b(w, 21)
        s = (b0 ^ b1 ^ b3 ^ p1) | ((b0 ^ b2 ^ b3 ^ p2) << 1) | ((b1 ^ b2 ^ b3 ^ p3) << 2)
        if s == 0b111:
            b3 ^= 1
        elif s == 0b110:
            b2 ^= 1
        elif s == 0b101:
            b1 ^= 1
        elif s == 0b011:
            b0 ^= 1
        sign = maj([b(w, 31), b(w, 30), b(w, 29)])
        d4 = (b0 << 3) | (b1 << 2) | (b2 << 1) | b3
        if F == 0:
            v = (sign << 31) | (((max_e - d4) << 23) & 0xFFFFFFFF) | (b(w, 24) << 22) | (((w >> 15) & 0x3F) << 16)
        else:
            d = (d4 << 1) | b(w, 24)
            v = (sign << 31) | (((max_e - d) << 23) & 0xFFFFFFFF) | (((w >> 15) & 0x3F) << 17)
        out.append(v & 0xFFFF0000)
    return out


def ref_encode(words, B, compat=False):
    return np.array(sum((ref_encode_block(words[i:i + B], B, compat) for i in range(0, len(words), B)), []), np.uint32)


def ref_decode(words, B):
    return np.array(sum((ref_decode_block(words[i:i + B], B) for i in range(0, len(words), B)), []), np.uint32)


# ------------------------------ random blocks ------------------------------
word_st = st.tuples(
    st.integers(0, 1),                                                   # sign
    st.sampled_from(["near", "near", "near", "zero", "sub", "wide", "tiny"]),
    st.integers(-40, 40),                                                # exponent offset
    st.integers(0, (1 << 23) - 1),                                       # mantissa (low bits truncated)
)


def make_words(spec, base):
    out = []
    for sign, kind, off, mant in spec:
        if kind == "zero":
            e, mant = 0, 0
        elif kind == "sub":
            e = 0
        elif kind == "near":
            e = min(254, max(1, base + off % 12))
        elif kind == "tiny":
            e = min(254, max(1, off + 41))            # exponents 1..81: huge spreads, small max_e
        else:
            e = min(254, max(1, base + off))
        if kind == "sub" and mant == 0:
            mant = 1 << 16
        out.append((sign << 31) | (e << 23) | mant)
    return np.array(out, np.uint32)


def blocks_strategy(B):
    return st.tuples(st.lists(word_st, min_size=B * NBLOCKS, max_size=B * NBLOCKS), st.integers(1, 254))


@pytest.mark.parametrize("B", [16, 32, 64])
@pytest.mark.parametrize("compat", [False, True])
def test_encode_decode_match_reference_bit_for_bit(B, compat):
    @settings(max_examples=25, deadline=None, derandomize=True)
    @given(blocks_strategy(B))
    def check(data):
        spec, base = data
        w = make_words(spec, base)
        enc = np.asarray(sparrow.encode(w, B, compat=compat))
        np.testing.assert_array_equal(enc, ref_encode(w, B, compat))
        assert not np.any(enc & ~np.uint32(sparrow.stored_mask(B)))
        dec = np.asarray(sparrow.decode(enc, B))
        np.testing.assert_array_equal(dec, ref_decode(enc, B))
        # decoding random stored words (arbitrary fault patterns) agrees with the reference too
        noise = (w * np.uint32(2654435761)) & np.uint32(sparrow.stored_mask(B))
        np.testing.assert_array_equal(np.asarray(sparrow.decode(noise, B)), ref_decode(noise, B))

    check()


@pytest.mark.parametrize("B", [16, 32, 64])
def test_round_trip_rules(B):
    """Round trip (docs/sparrow.md): exact for F = 0 blocks (E = 0 words become the smallest 4-bit-mode magnitude when
    max_e >= 16), F = 1 loses the last mantissa bit, > 31 steps below max -> smallest 5-bit magnitude."""
    @settings(max_examples=25, deadline=None, derandomize=True)
    @given(blocks_strategy(B))
    def check(data):
        spec, base = data
        w = make_words(spec, base) & np.uint32(0xFFFF0000)
        dec = np.asarray(sparrow.decode(sparrow.encode(w, B), B))
        for blk in range(NBLOCKS):
            ws, ds = w[blk * B:(blk + 1) * B], dec[blk * B:(blk + 1) * B]
            e = ((ws >> 23) & 0xFF).astype(np.int64)
            max_e = e.max()
            min_e = e[e != 0].min() if np.any(e != 0) else 255
            sign = ws & np.uint32(0x80000000)
            if max(max_e - min_e, 0) < 16:
                exact = (e != 0) | (max_e < 16)
                np.testing.assert_array_equal(ds[exact], ws[exact])
                smallest = sign[~exact] | np.uint32(((max_e - 15) << 23) & 0xFFFFFFFF)
                np.testing.assert_array_equal(ds[~exact], smallest)
            else:
                far = max_e - e >= 32
                np.testing.assert_array_equal(ds[~far], ws[~far] & np.uint32(0xFFFE0000))
                np.testing.assert_array_equal(ds[far], sign[far] | np.uint32((max_e - 31) << 23))

    check()


def _protected_bits(B):
    bits = [31, 30, 29, 28, 27, 26, 25, 23, 22, 21, 14]
    return bits + [13] if B == 16 else bits


@pytest.mark.parametrize("B", [16, 32, 64])
def test_every_single_bit_error_in_protected_fields_is_corrected(B):
    rng = np.random.default_rng(B)
    narrow = (rng.integers(0, 2, B).astype(np.uint32) << 31) | ((120 + rng.integers(0, 12, B)).astype(np.uint32) << 23) \
        | rng.integers(0, 1 << 23, B).astype(np.uint32)
    wide = narrow.copy()
    wide[3] = (wide[3] & np.uint32(0x807FFFFF)) | np.uint32(90 << 23)           # spread >= 16: F = 1
    wide[5] = np.uint32(0)                                                       # zero word
    for block in (narrow, wide):
        enc = np.asarray(sparrow.encode(block, B))
        clean = np.asarray(sparrow.decode(enc, B))
        variants = []
        for c in range(B):
            for bit in _protected_bits(B):
                v = enc.copy()
                v[c] ^= np.uint32(1 << bit)
                variants.append(v)
        variants = np.stack(variants)                                            # (B * bits, B)
        dec = np.asarray(sparrow.decode_blocks(jnp.asarray(variants), B))
        np.testing.assert_array_equal(dec, np.broadcast_to(clean, dec.shape))
        # bits outside the stored range are ignored
        v = enc | np.uint32(~sparrow.stored_mask(B) & 0xFFFFFFFF)
        np.testing.assert_array_equal(np.asarray(sparrow.decode(v, B)), clean)


def test_unprotected_mantissa_error_is_not_corrected():
    w = np.full(32, 0x3F800000, np.uint32)
    enc = np.array(sparrow.encode(w, 32))
    enc[0] ^= np.uint32(1 << 20)
    assert np.asarray(sparrow.decode(enc, 32))[0] != w[0]


def test_stored_bits():
    assert [sparrow.stored_bits(b) for b in (16, 32, 64)] == [19, 18, 18]


@pytest.mark.parametrize("bad", [8, 0, 128, 48, "64", 64.0, None, True])
def test_bad_block_size_named(bad):
    with pytest.raises(JaxfaultError, match=repr(bad).replace(".", r"\.")):
        sparrow.encode(np.zeros(64, np.uint32), bad)
    with pytest.raises(JaxfaultError):
        sparrow.stored_bits(bad)


def test_bad_words():
    with pytest.raises(JaxfaultError, match="float32"):
        sparrow.encode(np.zeros(64, np.float32), 64)
    with pytest.raises(JaxfaultError, match="int64"):
        sparrow.decode(np.zeros(64, np.int64), 64)
    with pytest.raises(JaxfaultError, match="100"):
        sparrow.encode(np.zeros(100, np.uint32), 32)
    with pytest.raises(JaxfaultError, match="shape"):
        sparrow.encode(np.zeros((2, 32), np.uint32), 32)
    with pytest.raises(JaxfaultError, match="list"):
        sparrow.encode([0] * 32, 32)
    for bad in (np.nan, np.inf, -np.inf):
        w = np.ones(32, np.float32)
        w[7] = bad
        with pytest.raises(JaxfaultError, match="NaN/Inf.*index 7"):
            sparrow.encode(w.view(np.uint32), 32)
