"""Stuck-at and bit-flip faults over the stored cells of words of any width.

A word is a uint32 whose stored cells are the set bits of ``stored_mask``: 18 of them for a
Sparrow-encoded bf16 word, 16 for a raw bf16 word in the high half, and ``(1 << bits) - 1`` for
a ``bits``-bit two's-complement integer word (4, 8 or 16 bits; :func:`int_to_words`). Every
stored cell is faulty independently with probability ``ber``; a faulty cell is stuck at 1
("0->1") with probability ``zero_to_one`` and stuck at 0 ("1->0") otherwise. Stuck-at faults
apply as ``word = (word & ~map_1to0) | map_0to1`` (the argument order of every function here);
the flip model XORs instead.

Rates may be Python numbers or traced float32 scalars (a sweep inside one compiled program);
a traced ``ber`` needs a static ``rate_bound``. The same key and rate give the same faults
either way (see :mod:`jaxfault.faults.sampler`). Every injection returns :class:`FaultStats`
with the realised rate.
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault.core.errors import check
from jaxfault.faults import sampler

U32 = jnp.uint32


class FaultStats(NamedTuple):
    """Realised fault counts of one injection (arrays, so they batch under vmap/lax.map)."""

    n_faults: jax.Array        # faulty cells
    n_zero_to_one: jax.Array   # of which stuck at 1 (flip model: 0)
    n_cells: jax.Array         # stored cells exposed to faults
    realised_ber: jax.Array    # n_faults / n_cells
    zero_to_one_share: jax.Array  # n_zero_to_one / n_faults (0 when no faults)


def fault_stats(n_faults, n_zero_to_one, n_cells) -> FaultStats:
    """FaultStats from counts (rates derived: faults / cells and the 0->1 share of the faults)."""
    nf = jnp.asarray(n_faults, jnp.int32)
    n01 = jnp.asarray(n_zero_to_one, jnp.int32)
    cells = jnp.asarray(n_cells, jnp.float32)
    return FaultStats(nf, n01, cells, nf.astype(jnp.float32) / jnp.maximum(cells, 1.0),
                      jnp.where(nf > 0, n01.astype(jnp.float32) / jnp.maximum(nf, 1).astype(jnp.float32), 0.0))


def merge_stats(stats: Sequence[FaultStats]) -> FaultStats:
    """The FaultStats of several injections taken together (counts summed, rates recomputed)."""
    stats = list(stats)
    if not stats:
        return fault_stats(0, 0, 0)
    return fault_stats(sum(s.n_faults for s in stats), sum(s.n_zero_to_one for s in stats),
                       sum(s.n_cells for s in stats))


def stored_positions(stored_mask: int) -> np.ndarray:
    """Bit numbers of the stored cells of a word (MSB first)."""
    check(isinstance(stored_mask, (int, np.integer)) and 0 < int(stored_mask) <= 0xFFFFFFFF,
          f"stored_mask must be a nonzero 32-bit mask, got {stored_mask!r}")
    return np.array([b for b in range(31, -1, -1) if (int(stored_mask) >> b) & 1], np.uint32)


# ------------------------------------------------------------------------------ integer words
def int_stored_mask(bits: int) -> int:
    """stored_mask of a bits-bit integer word held in the low bits of a uint32."""
    check(isinstance(bits, (int, np.integer)) and 1 <= int(bits) <= 32, f"bits must be in 1..32, got {bits!r}")
    return (1 << int(bits)) - 1


def int_to_words(q, bits: int) -> jax.Array:
    """Signed integers -> uint32 words holding their bits-bit two's complement in the low bits."""
    return (jnp.asarray(q).astype(jnp.int32) & jnp.int32(int_stored_mask(bits))).astype(U32) \
        if bits < 32 else jnp.asarray(q).astype(jnp.int32).astype(U32)


def words_to_int(u, bits: int) -> jax.Array:
    """uint32 words -> int32: the low ``bits`` bits read as a two's-complement (sign-extended) word."""
    shift = 32 - int(bits)
    return jax.lax.shift_right_arithmetic(jax.lax.shift_left(jnp.asarray(u).astype(jnp.int32), jnp.int32(shift)),
                                          jnp.int32(shift))


def apply_stuck_at_int(q, map_1to0, map_0to1, bits: int, container_bits: int | None = None) -> jax.Array:
    """Stuck-at faults on signed integers stored as bits-bit words -> int32.

    The maps (uint32 or int, only the low ``bits`` bits may be set) apply to the two's-complement
    word: ``(word & ~map_1to0) | map_0to1``, read back sign-extended. With ``container_bits``
    (> bits) the word is the container's: the low ``bits`` cells are faulted and the container's
    upper bits keep the original sign, so a 4-bit word in an 8-bit container reads back in
    [-16, 15] instead of [-8, 7].
    """
    width = int(bits) if container_bits is None else int(container_bits)
    u = int_to_words(q, width)
    u = (u & ~jnp.asarray(map_1to0).astype(U32)) | jnp.asarray(map_0to1).astype(U32)
    return words_to_int(u, width)


# ------------------------------------------------------------------------------------ sampling
def _key(key):
    check(isinstance(key, jax.Array) and (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or key.dtype == jnp.uint32),
          f"key must be a JAX PRNG key, got {type(key).__name__}")
    return key


def _check_word_array(words, name="words"):
    check(hasattr(words, "dtype") and words.dtype == np.uint32,
          f"{name} must be a uint32 array, got {getattr(words, 'dtype', type(words).__name__)}")
    check(words.ndim == 1, f"{name} must be 1-D, got shape {tuple(words.shape)}")
    return jnp.asarray(words)


def _rates(ber, zero_to_one, rate_bound):
    p, bound = sampler.resolve_rate("ber", ber, rate_bound)
    q, _ = sampler.resolve_rate("zero_to_one", zero_to_one, bounded=False)
    return p, q, bound


def _is_static_zero(ber) -> bool:
    return not sampler.is_traced(ber) and float(ber) == 0.0


def _word_update(flip: bool):
    """The sampler's ``apply`` for faults applied to the words themselves: XOR the drawn cells
    (flips) or force them (stuck-at: 1->0 cells cleared, 0->1 cells set)."""
    def apply(w, idx, g10, g01):
        new = w[idx] ^ g10 if flip else (w[idx] & ~g10) | g01
        return w.at[idx].set(new, mode="drop")

    return apply


@partial(jax.jit, static_argnames=("stored_mask", "flip", "rate_bound", "chunk_cap", "segment_cells"))
def _inject(key, words, p, q, *, stored_mask: int, flip: bool, rate_bound: float,
            chunk_cap: int = sampler.CHUNK_CAP, segment_cells: int = sampler.MAX_SEGMENT_CELLS):
    pos = stored_positions(stored_mask)

    out, nf, n01 = sampler.for_each_fault_group(key, words.shape[0], pos, p, q, _word_update(flip), words, rate_bound=rate_bound,
                                                chunk_cap=chunk_cap, segment_cells=segment_cells)
    return out, fault_stats(nf, n01, words.shape[0] * len(pos))


@partial(jax.jit, static_argnames=("stored_mask", "flip", "rate_bound", "chunk_cap", "segment_cells"))
def _inject_each(keys, words, p, q, *, stored_mask: int, flip: bool, rate_bound: float,
                 chunk_cap: int = sampler.CHUNK_CAP, segment_cells: int = sampler.MAX_SEGMENT_CELLS):
    pos = stored_positions(stored_mask)
    sizes = [w.shape[0] for w in words]

    flat = jnp.concatenate(words) if len(words) > 1 else words[0]
    out, nf, n01 = sampler.for_each_fault_group_streams(keys, sizes, pos, p, q, _word_update(flip), flat, rate_bound=rate_bound,
                                                        chunk_cap=chunk_cap, segment_cells=segment_cells)
    return jnp.split(out, np.cumsum(sizes)[:-1].tolist()), nf, n01


@partial(jax.jit, static_argnames=("n_words", "stored_mask", "rate_bound", "chunk_cap", "segment_cells"))
def _maps(key, p, q, *, n_words: int, stored_mask: int, rate_bound: float,
          chunk_cap: int = sampler.CHUNK_CAP, segment_cells: int = sampler.MAX_SEGMENT_CELLS):
    pos = stored_positions(stored_mask)

    def apply(maps, idx, g10, g01):
        m10, m01 = maps
        return (m10.at[idx].set(m10[idx] | g10, mode="drop"), m01.at[idx].set(m01[idx] | g01, mode="drop"))

    zeros = jnp.zeros((n_words,), U32)
    (m10, m01), nf, n01 = sampler.for_each_fault_group(key, n_words, pos, p, q, apply, (zeros, zeros),
                                                       rate_bound=rate_bound, chunk_cap=chunk_cap,
                                                       segment_cells=segment_cells)
    return m10, m01, fault_stats(nf, n01, n_words * len(pos))


def inject_stuck_at(key, words, ber, zero_to_one=0.0, stored_mask: int = 0xFFFFFFFF, *, rate_bound=None):
    """Stuck-at faults drawn from key applied to 1-D uint32 words -> (faulty words, FaultStats).

    Same key, same faults as ``stuck_at_maps(key, len(words), ...)`` (without building the maps).
    ``ber`` and ``zero_to_one`` may be traced scalars; a traced ``ber`` needs a static
    ``rate_bound`` >= every value it takes (it only sizes the chunks: no fault is ever dropped).
    """
    p, q, bound = _rates(ber, zero_to_one, rate_bound)
    words = _check_word_array(words)
    stored_positions(stored_mask)
    if _is_static_zero(ber):
        return words, fault_stats(0, 0, words.shape[0] * len(stored_positions(stored_mask)))
    return _inject(_key(key), words, p, q, stored_mask=int(stored_mask), flip=False, rate_bound=bound)


def inject_stuck_at_each(keys, words, ber, zero_to_one=0.0, stored_mask: int = 0xFFFFFFFF, *, rate_bound=None):
    """Stuck-at faults on several 1-D uint32 word arrays, array i drawn from keys[i] (a list of
    keys or a key array), in one sampler loop -> (list of faulty arrays, FaultStats over all).

    Array i gets exactly the faults of ``inject_stuck_at(keys[i], words[i], ...)``; drawing them
    together compiles one sampler instead of one per array (a model's kernels, each with its own
    key), which keeps the program of a many-layer model small.
    """
    return _inject_many(keys, words, ber, zero_to_one, stored_mask, rate_bound, flip=False)


def inject_flips_each(keys, words, ber, stored_mask: int = 0xFFFFFFFF, *, rate_bound=None):
    """XOR bit flips on several 1-D uint32 word arrays, array i drawn from keys[i], in one
    sampler loop -> (list of faulty arrays, FaultStats over all).

    Array i gets exactly the flips of ``inject_flips(keys[i], words[i], ...)``, with one sampler
    to compile instead of one per array.
    """
    return _inject_many(keys, words, ber, 0.0, stored_mask, rate_bound, flip=True)


def _inject_many(keys, words, ber, zero_to_one, stored_mask, rate_bound, *, flip: bool):
    p, q, bound = _rates(ber, zero_to_one, rate_bound)
    words = [_check_word_array(w, f"words[{i}]") for i, w in enumerate(words)]
    if isinstance(keys, jax.Array):  # a key array, one key per row
        _key(keys)
        n_keys = keys.shape[0] if keys.ndim >= (1 if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key) else 2) else -1
    else:
        keys = [_key(k) for k in keys]
        n_keys = len(keys)
    check(n_keys == len(words), f"give one key per word array: {n_keys} keys, {len(words)} arrays")
    cells = sum(w.shape[0] for w in words) * len(stored_positions(stored_mask))
    if not words or _is_static_zero(ber):
        return words, fault_stats(0, 0, cells)
    out, nf, n01 = _inject_each(keys, words, p, q, stored_mask=int(stored_mask), flip=flip, rate_bound=bound)
    return list(out), fault_stats(nf, n01, cells)


def inject_flips(key, words, ber, stored_mask: int = 0xFFFFFFFF, *, rate_bound=None):
    """XOR bit-flip faults (each stored cell flips with probability ber) -> (faulty words, FaultStats)."""
    p, q, bound = _rates(ber, 0.0, rate_bound)
    words = _check_word_array(words)
    stored_positions(stored_mask)
    if _is_static_zero(ber):
        return words, fault_stats(0, 0, words.shape[0] * len(stored_positions(stored_mask)))
    return _inject(_key(key), words, p, q, stored_mask=int(stored_mask), flip=True, rate_bound=bound)


def stuck_at_maps(key, n_words: int, ber, zero_to_one=0.0, stored_mask: int = 0xFFFFFFFF, *, rate_bound=None):
    """Explicit (map_1to0, map_0to1, FaultStats) uint32 maps of shape (n_words,), only over stored cells."""
    p, q, bound = _rates(ber, zero_to_one, rate_bound)
    check(isinstance(n_words, (int, np.integer)) and n_words >= 0, f"n_words must be a non-negative int, got {n_words!r}")
    stored_positions(stored_mask)
    if _is_static_zero(ber):
        zeros = jnp.zeros((int(n_words),), U32)
        return zeros, zeros, fault_stats(0, 0, int(n_words) * len(stored_positions(stored_mask)))
    return _maps(_key(key), p, q, n_words=int(n_words), stored_mask=int(stored_mask), rate_bound=bound)


def flip_map(key, n_words: int, ber, stored_mask: int = 0xFFFFFFFF, *, rate_bound=None):
    """Explicit (flip map, FaultStats); same key, same cells as `inject_flips`."""
    m10, _, stats = stuck_at_maps(key, n_words, ber, 0.0, stored_mask, rate_bound=rate_bound)
    return m10, stats


def apply_stuck_at(words, map_1to0, map_0to1):
    """word = (word & ~map_1to0) | map_0to1 elementwise (uint32 arrays of one shape)."""
    for name, a in (("words", words), ("map_1to0", map_1to0), ("map_0to1", map_0to1)):
        check(hasattr(a, "dtype") and a.dtype == np.uint32,
              f"{name} must be a uint32 array, got {getattr(a, 'dtype', type(a).__name__)}")
    check(words.shape == map_1to0.shape == map_0to1.shape,
          f"shapes differ: words {tuple(words.shape)}, map_1to0 {tuple(map_1to0.shape)}, map_0to1 {tuple(map_0to1.shape)}")
    return (jnp.asarray(words) & ~jnp.asarray(map_1to0)) | jnp.asarray(map_0to1)


def apply_flips(words, flips):
    """word ^ flips elementwise (uint32 arrays of one shape)."""
    check(words.dtype == np.uint32 and flips.dtype == np.uint32,
          f"words and flips must be uint32, got {words.dtype} and {flips.dtype}")
    check(words.shape == flips.shape, f"shapes differ: words {tuple(words.shape)}, flips {tuple(flips.shape)}")
    return jnp.asarray(words) ^ jnp.asarray(flips)


def inject_maps(words, map_1to0, map_0to1, stored_mask: int = 0xFFFFFFFF):
    """Replay caller-given stuck-at maps (restricted to the stored cells) -> (faulty words, FaultStats)."""
    pos = stored_positions(stored_mask)
    m = jnp.uint32(stored_mask)
    m10 = jnp.asarray(map_1to0) & m
    m01 = jnp.asarray(map_0to1) & m
    out = apply_stuck_at(words, m10.astype(U32), m01.astype(U32))
    n01 = jnp.sum(jax.lax.population_count(m01), dtype=jnp.int32)
    nf = jnp.sum(jax.lax.population_count(m10 | m01), dtype=jnp.int32)
    return out, fault_stats(nf, n01, int(np.prod(words.shape)) * len(pos))
