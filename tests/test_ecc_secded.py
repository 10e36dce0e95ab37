"""SEC-DED (72,64) baseline and the scheme registry."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfault import ecc
from jaxfault.ecc import secded
from jaxfault.core.errors import JaxfaultError


def ref_checks(group):
    """Extended Hamming over 64 data bits: positions 1..71, check bits at powers of two, overall parity."""
    data = [(int(group[j // 16]) >> (16 + j % 16)) & 1 for j in range(64)]
    pos = [p for p in range(1, 72) if p & (p - 1)]
    c = [0] * 8
    for i in range(7):
        for bit, p in zip(data, pos):
            if (p >> i) & 1:
                c[i] ^= bit
    c[7] = (sum(data) + sum(c[:7])) & 1
    return c


def test_encode_matches_reference_and_layout():
    rng = np.random.default_rng(0)
    w = rng.integers(0, 2 ** 32, 64, dtype=np.uint64).astype(np.uint32)
    enc = np.asarray(secded.encode(w))
    np.testing.assert_array_equal(enc & np.uint32(0xFFFF0000), w & np.uint32(0xFFFF0000))
    assert not np.any(enc & np.uint32(0x3FFF))
    for g in range(16):
        c = ref_checks(w[4 * g:4 * g + 4])
        for k in range(4):
            assert (enc[4 * g + k] >> 15) & 1 == c[2 * k] and (enc[4 * g + k] >> 14) & 1 == c[2 * k + 1]


def test_all_single_errors_corrected_double_errors_detected():
    rng = np.random.default_rng(1)
    w = (rng.integers(0, 2 ** 32, 4, dtype=np.uint64).astype(np.uint32)) & np.uint32(0xFFFF0000)
    enc = np.asarray(secded.encode(w))
    cells = [(k, b) for k in range(4) for b in range(14, 32)]
    single = np.stack([enc ^ np.where(np.arange(4) == k, np.uint32(1 << b), np.uint32(0)) for k, b in cells])
    dec, status = secded.decode_with_status(jnp.asarray(single))
    np.testing.assert_array_equal(np.asarray(dec), np.broadcast_to(w, dec.shape))
    np.testing.assert_array_equal(np.asarray(status), 1)
    pairs = [(a, b) for i, a in enumerate(cells) for b in cells[i + 1:]]
    double = []
    for (k1, b1), (k2, b2) in pairs:
        v = enc.copy()
        v[k1] ^= np.uint32(1 << b1)
        v[k2] ^= np.uint32(1 << b2)
        double.append(v)
    _, status = secded.decode_with_status(jnp.asarray(np.stack(double)))
    np.testing.assert_array_equal(np.asarray(status), 2)                # every double error detected
    assert int(secded.decode_with_status(jnp.asarray(enc))[1][0]) == 0


def test_registry_and_errors():
    for name, bits_ in (("sparrow", 18), ("secded", 18), ("none", 16)):
        s = ecc.get_scheme(name, 64)
        assert s.stored_bits == bin(s.stored_mask).count("1") == bits_
    assert ecc.get_scheme("sparrow", 16).stored_bits == 19
    with pytest.raises(JaxfaultError, match="hamming"):
        ecc.get_scheme("hamming")
    with pytest.raises(JaxfaultError, match="48"):
        ecc.get_scheme("sparrow", 48)
    with pytest.raises(JaxfaultError, match="6 is not a multiple"):
        secded.encode(np.zeros(6, np.uint32))
    x = np.array([1, np.nan, 2, 3], np.float32).view(np.uint32)
    with pytest.raises(JaxfaultError, match="NaN"):
        secded.encode(x)


@pytest.mark.parametrize("name", ["sparrow", "secded", "none"])
def test_fault_free_round_trip_of_schemes(name):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(256) * 0.05).astype(np.float32)
    s = ecc.get_scheme(name, 64)
    w = x.view(np.uint32) & np.uint32(0xFFFF0000)
    np.testing.assert_array_equal(np.asarray(s.decode(s.encode(jnp.asarray(w)))), w)
