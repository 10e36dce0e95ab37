"""Stuck-at and bit-flip fault maps over the stored bit cells of encoded words (SPEC 1.4).

Every stored cell is faulty independently with probability `ber`; a faulty cell is stuck at 1
("0->1") with probability `zero_to_one` and stuck at 0 ("1->0") otherwise. Stuck-at faults apply
as word = (word & ~map_1to0) | map_0to1; the flip model XORs instead.

Sampling method (exact, cost proportional to the number of faults). The faulty cells of a
Bernoulli(p) process are found by jumping over geometric gaps: gap = floor(E / lambda) with
E ~ Exp(1) and lambda = -log(1 - p), i.e. P(gap = g) = (1 - p)^g p. E = -log(U) uses a uniform U
built with full relative float32 precision (a 23-bit random mantissa in a binade picked by the
count of leading zeros of a second random word, so U covers (2^-33, 1) with no 2^-24 floor):
the gap law is exact up to float32 rounding of E / lambda (relative 2^-23). Each fault's type is
an exact threshold test of a random 32-bit word against round(q * 2^32). Faults are drawn in chunks
sized to the mean count + 10 standard deviations; a `while_loop` continues from the last fault if a
chunk does not reach the end of the cells (memorylessness makes the restart exact), so no fault is
ever dropped. Cells beyond 2^30 - 1 per call are handled by splitting into independent segments.
Realised rates (faults / stored cells, and the 0->1 share) are returned with every injection.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault.errors import check, check_probability

U32 = jnp.uint32
_CAP = 1 << 30                 # saturation value of cell positions
_MAX_SEGMENT_CELLS = (1 << 30) - 1
CHUNK_CAP = 1 << 16            # faults drawn per loop iteration at most (keeps temporaries in cache)


class FaultStats(NamedTuple):
    """Realised fault counts of one injection (arrays, so they batch under vmap/lax.map)."""

    n_faults: jax.Array        # faulty cells
    n_zero_to_one: jax.Array   # of which stuck at 1 (flip model: 0)
    n_cells: jax.Array         # stored cells exposed to faults
    realised_ber: jax.Array    # n_faults / n_cells
    zero_to_one_share: jax.Array  # n_zero_to_one / n_faults (0 when no faults)


def _stats(nf, n01, n_cells):
    nf = jnp.asarray(nf, jnp.int32)
    n01 = jnp.asarray(n01, jnp.int32)
    cells = jnp.asarray(n_cells, jnp.float32)
    return FaultStats(nf, n01, jnp.asarray(n_cells, jnp.float32), nf.astype(jnp.float32) / jnp.maximum(cells, 1.0),
                      jnp.where(nf > 0, n01.astype(jnp.float32) / jnp.maximum(nf, 1).astype(jnp.float32), 0.0))


def stored_positions(stored_mask: int) -> np.ndarray:
    """Bit numbers of the stored cells of a word (MSB first)."""
    check(isinstance(stored_mask, (int, np.integer)) and 0 < int(stored_mask) <= 0xFFFFFFFF,
          f"stored_mask must be a nonzero 32-bit mask, got {stored_mask!r}")
    return np.array([b for b in range(31, -1, -1) if (int(stored_mask) >> b) & 1], np.uint32)


def geometric_gaps(key: jax.Array, n: int, p: float) -> jax.Array:
    """n iid Geometric(p) gaps (failures before a success), uint32, saturated at 2^30."""
    r = jax.random.bits(key, (2, n), U32)
    z = jax.lax.clz(r[1])                                   # P(z = k) = 2^-(k+1)
    ubits = ((U32(126) - z) << 23) | (r[0] >> 9)            # U in [2^-(z+1), 2^-z), 23-bit mantissa
    e = -jnp.log(jax.lax.bitcast_convert_type(ubits, jnp.float32))
    lam = np.float32(-math.log1p(-p)) if p < 1.0 else np.float32(np.inf)
    g = jnp.floor(e / lam)
    return jnp.minimum(g, np.float32(_CAP)).astype(U32)


def _chunk_size(n_cells: int, p: float) -> int:
    mean = n_cells * p
    return int(max(1, min(CHUNK_CAP, math.ceil(mean + 10.0 * math.sqrt(mean) + 32), n_cells)))


def _for_each_fault_group(key, n_words: int, positions: np.ndarray, p: float, q: float,
                          apply: Callable, state):
    """Draw the faults of n_words words and fold them into `state` group by group.

    apply(state, word_index, mask_1to0, mask_0to1) with word_index unique per call (out of range =
    unused slot, to be dropped). Returns (state, n_faults, n_zero_to_one).
    """
    S = len(positions)
    nf = jnp.int32(0)
    n01 = jnp.int32(0)
    if p == 0.0 or n_words == 0:
        return state, nf, n01
    table = jnp.asarray(positions)
    seg_words = max(1, _MAX_SEGMENT_CELLS // S)
    thr = None if q >= 1.0 else U32(min(int(round(q * 2.0 ** 32)), 2 ** 32 - 1))
    for s_i, w0 in enumerate(range(0, n_words, seg_words)):
        nw = min(seg_words, n_words - w0)
        L = nw * S
        k = _chunk_size(L, p)
        seg_key = jax.random.fold_in(key, s_i)

        def body(carry, seg_key=seg_key, nw=nw, L=L, k=k, w0=w0):
            state, start, it, nf, n01 = carry
            k_gap, k_type = jax.random.split(jax.random.fold_in(seg_key, it))
            # end = start + cumulative steps. Steps are <= 2^30 + 1 and start < L < 2^30, so every
            # end up to the first one past L is exact in uint32; later ones may wrap, but the
            # running max of the "past L" flag marks them invalid anyway.
            end = start + jnp.cumsum(geometric_gaps(k_gap, k, p) + U32(1), dtype=U32)
            valid = jax.lax.cummax((end > U32(L)).astype(jnp.int32), axis=0) == 0
            pos = end - U32(1)
            is01 = (jnp.ones((k,), bool) if thr is None else jax.random.bits(k_type, (k,), U32) < thr) & valid
            word = jnp.where(valid, pos // U32(S), U32(nw)).astype(jnp.int32)
            mask = U32(1) << table[jnp.where(valid, pos % U32(S), 0).astype(jnp.int32)]
            new = jnp.concatenate([jnp.ones((1,), bool), word[1:] != word[:-1]])
            gid = jnp.cumsum(new.astype(jnp.int32)) - 1
            g10 = jax.ops.segment_sum(jnp.where(valid & ~is01, mask, U32(0)), gid, k, indices_are_sorted=True)
            g01 = jax.ops.segment_sum(jnp.where(is01, mask, U32(0)), gid, k, indices_are_sorted=True)
            gword = jnp.full((k,), nw, jnp.int32).at[gid].set(word)
            gword = jnp.where(gword < nw, gword + w0, n_words)
            state = apply(state, gword, g10, g01)
            nxt = jnp.where(valid[-1], end[-1], U32(_CAP))
            return (state, nxt, it + 1, nf + jnp.sum(valid, dtype=jnp.int32), n01 + jnp.sum(is01, dtype=jnp.int32))

        carry = (state, U32(0), jnp.int32(0), nf, n01)
        state, _, _, nf, n01 = jax.lax.while_loop(lambda c, L=L: c[1] < U32(L), body, carry)
    return state, nf, n01


def _check_rates(ber, zero_to_one):
    return check_probability("ber", ber), check_probability("zero_to_one", zero_to_one)


def _check_word_array(words, name="words"):
    check(hasattr(words, "dtype") and words.dtype == np.uint32,
          f"{name} must be a uint32 array, got {getattr(words, 'dtype', type(words).__name__)}")
    check(words.ndim == 1, f"{name} must be 1-D, got shape {tuple(words.shape)}")
    return jnp.asarray(words)


@partial(jax.jit, static_argnames=("ber", "q", "stored_mask", "flip"))
def _inject(key, words, ber: float, q: float, stored_mask: int, flip: bool):
    pos = stored_positions(stored_mask)

    def apply(w, idx, g10, g01):
        new = w[idx] ^ g10 if flip else (w[idx] & ~g10) | g01
        return w.at[idx].set(new, mode="drop")

    out, nf, n01 = _for_each_fault_group(key, words.shape[0], pos, ber, q, apply, words)
    return out, _stats(nf, n01, words.shape[0] * len(pos))


@partial(jax.jit, static_argnames=("n_words", "ber", "q", "stored_mask"))
def _maps(key, n_words: int, ber: float, q: float, stored_mask: int):
    pos = stored_positions(stored_mask)

    def apply(maps, idx, g10, g01):
        m10, m01 = maps
        return (m10.at[idx].set(m10[idx] | g10, mode="drop"), m01.at[idx].set(m01[idx] | g01, mode="drop"))

    zeros = jnp.zeros((n_words,), U32)
    (m10, m01), nf, n01 = _for_each_fault_group(key, n_words, pos, ber, q, apply, (zeros, zeros))
    return m10, m01, _stats(nf, n01, n_words * len(pos))


def _key(key):
    check(isinstance(key, jax.Array) and (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or key.dtype == jnp.uint32),
          f"key must be a JAX PRNG key, got {type(key).__name__}")
    return key


def inject_stuck_at(key, words, ber: float, zero_to_one: float = 0.0, stored_mask: int = 0xFFFFFFFF):
    """Stuck-at faults drawn from key applied to 1-D uint32 words -> (faulty words, FaultStats).

    Same key, same faults as `stuck_at_maps(key, len(words), ...)` (without building the maps).
    Jittable (rates and mask are static Python numbers).
    """
    ber, q = _check_rates(ber, zero_to_one)
    words = _check_word_array(words)
    stored_positions(stored_mask)
    return _inject(_key(key), words, ber, q, int(stored_mask), False)


def inject_flips(key, words, ber: float, stored_mask: int = 0xFFFFFFFF):
    """XOR bit-flip faults (each stored cell flips with probability ber) -> (faulty words, FaultStats)."""
    ber, _ = _check_rates(ber, 0.0)
    words = _check_word_array(words)
    stored_positions(stored_mask)
    return _inject(_key(key), words, ber, 0.0, int(stored_mask), True)


def stuck_at_maps(key, n_words: int, ber: float, zero_to_one: float = 0.0, stored_mask: int = 0xFFFFFFFF):
    """Explicit (map_1to0, map_0to1, FaultStats) uint32 maps of shape (n_words,), only over stored cells."""
    ber, q = _check_rates(ber, zero_to_one)
    check(isinstance(n_words, (int, np.integer)) and n_words >= 0, f"n_words must be a non-negative int, got {n_words!r}")
    stored_positions(stored_mask)
    return _maps(_key(key), int(n_words), ber, q, int(stored_mask))


def flip_map(key, n_words: int, ber: float, stored_mask: int = 0xFFFFFFFF):
    """Explicit (flip map, FaultStats); same key, same cells as `inject_flips`."""
    m10, _, stats = stuck_at_maps(key, n_words, ber, 0.0, stored_mask)
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
    return out, _stats(nf, n01, int(np.prod(words.shape)) * len(pos))
