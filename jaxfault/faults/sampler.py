"""The one exact sampler of faulty cells: geometric gaps between faults, a while_loop over chunks.

Model: every cell of a sequence of L cells is faulty independently with probability ``p``; a
faulty cell is of type "0->1" with probability ``q`` and "1->0" otherwise.

Method (cost proportional to the number of faults, not of cells):

* The faulty cells of a Bernoulli(p) sequence are found by jumping over geometric gaps:
  gap = floor(E / lambda) with E ~ Exp(1) and lambda = -log(1 - p), i.e.
  P(gap = g) = (1 - p)^g p. E = -log(U) uses a uniform U built with full relative float32
  precision (a 23-bit random mantissa in a binade picked by the count of leading zeros of a
  second random word, so U covers (2^-33, 1) with no 2^-24 floor): the gap law is exact up to
  float32 rounding of E / lambda (relative 2^-23). Fault j's type is an exact threshold test of
  a random 32-bit word against round(q * 2^32).
* Fault j takes its three random words from block j // BLOCK, whose key is
  ``fold_in(segment_key, j // BLOCK)``. The sequence of faults is therefore a function of the
  key and the rates only, never of how many faults are drawn at once.
* Faults are drawn in chunks of whole blocks, sized from a static bound on the rate (mean +
  10 standard deviations at ``rate_bound``, at most CHUNK_CAP faults). A ``lax.while_loop``
  draws further chunks until the walk passes the last cell. There is no fixed capacity: a
  chunk that is too small costs one more loop iteration, never a dropped fault, so the rate
  bound only affects speed. Because the faults do not depend on the chunking, a rate given as
  a Python number and the same rate traced inside one compiled sweep give identical faults.
* More than MAX_SEGMENT_CELLS cells are split into segments with keys ``fold_in(key, s)``, so
  cell positions stay exact in uint32.

Rates are float32: a Python rate is rounded to float32 first, exactly as a traced one is, and
lambda is computed at run time behind an optimisation barrier (so that constant folding cannot
compute it differently from the compiled kernel). Out-of-range traced rates (negative, > 1,
NaN) cannot be rejected inside a compiled program; they give no faults of that kind.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault.core.errors import JaxfaultError, check_probability

U32 = jnp.uint32
GAP_SATURATION = 1 << 30              # gaps are saturated here (> any segment length)
MAX_SEGMENT_CELLS = (1 << 30) - 1     # cells per independent segment
BLOCK = 128                           # faults per random block (the unit of the random stream)
CHUNK_CAP = 1 << 16                   # faults drawn per loop iteration at most
SIGMAS = 10.0                         # chunk = mean + SIGMAS standard deviations at the rate bound


# --------------------------------------------------------------------------------------- rates
def is_traced(x) -> bool:
    """True for a value that only exists inside a trace (no concrete number to check)."""
    return isinstance(x, jax.core.Tracer)


def resolve_rate(name: str, value, rate_bound=None, *, bounded: bool = True):
    """(float32 scalar rate, static bound) from a Python number, a concrete array or a traced scalar.

    Concrete rates are checked to lie in [0, 1] (and <= rate_bound when one is given); their
    bound defaults to the rate itself. A traced rate needs a static ``rate_bound`` when
    ``bounded`` (the bound sizes the chunks), and must be a scalar.
    """
    bound = None
    if rate_bound is not None:
        from jaxfault.core.protocol import check_rate_bound
        bound = check_rate_bound(rate_bound, "rate_bound")
    if is_traced(value):
        if jnp.shape(value) != ():
            raise JaxfaultError(f"{name} must be a scalar, got shape {tuple(jnp.shape(value))}")
        if bounded and bound is None:
            raise JaxfaultError(f"{name} is traced: give rate_bound (the largest {name} it will take)")
        return jnp.asarray(value, jnp.float32), bound
    if hasattr(value, "shape") and np.shape(value) != ():
        raise JaxfaultError(f"{name} must be a scalar, got shape {tuple(np.shape(value))}")
    v = check_probability(name, value)
    if bounded and bound is not None and v > bound:
        raise JaxfaultError(f"{name} {v:g} exceeds rate_bound {bound:g}")
    return jnp.float32(v), (v if bound is None else bound)


def _lam(p):
    """lambda = -log(1 - p) (inf at p = 1), computed at run time from the float32 rate."""
    p = jax.lax.optimization_barrier(jnp.asarray(p, jnp.float32))
    return -jnp.log1p(-p)


def _gaps_from_bits(r_mantissa, r_binade, lam):
    z = jax.lax.clz(r_binade)                                      # P(z = k) = 2^-(k+1)
    ubits = ((U32(126) - z) << 23) | (r_mantissa >> 9)             # U in [2^-(z+1), 2^-z)
    e = -jnp.log(jax.lax.bitcast_convert_type(ubits, jnp.float32))
    g = jnp.floor(e / lam)
    # NaN (p NaN / > 1) and negative values (p < 0) mean "no fault": saturate.
    g = jnp.where(g >= 0, jnp.minimum(g, np.float32(GAP_SATURATION)), np.float32(GAP_SATURATION))
    return g.astype(U32)


def geometric_gaps(key: jax.Array, n: int, p) -> jax.Array:
    """n iid Geometric(p) gaps (failures before a success), uint32, saturated at 2^30.

    ``p`` may be a Python number or a traced float32 scalar (same values either way).
    """
    r = jax.random.bits(key, (2, n), U32)
    return _gaps_from_bits(r[0], r[1], _lam(p))


def _type_threshold(q):
    """(uint32 threshold, always-0->1 flag): fault is 0->1 iff bits < threshold or flag."""
    q = jnp.asarray(q, jnp.float32)
    thr = jnp.where((q > 0) & (q < 1), jnp.round(q * np.float32(2.0 ** 32)), 0.0).astype(U32)
    return thr, q >= 1


def chunk_blocks(n_cells: int, rate_bound: float, chunk_cap: int = CHUNK_CAP) -> int:
    """Blocks drawn per loop iteration: mean + SIGMAS sd (+32) faults at rate_bound, whole blocks."""
    mean = n_cells * rate_bound
    k = math.ceil(mean + SIGMAS * math.sqrt(mean) + 32)
    k = max(1, min(k, chunk_cap, n_cells))
    return max(1, -(-k // BLOCK))


def _block_bits(seg_key, first_block, n_blocks: int):
    """(3, n_blocks * BLOCK) random words of blocks first_block .. first_block + n_blocks - 1."""
    idx = first_block + jnp.arange(n_blocks, dtype=U32)
    r = jax.vmap(lambda i: jax.random.bits(jax.random.fold_in(seg_key, i), (3, BLOCK), U32))(idx)
    return jnp.transpose(r, (1, 0, 2)).reshape(3, n_blocks * BLOCK)


def for_each_fault_group(key, n_words: int, positions: np.ndarray, p, q, apply: Callable, state, *,
                         rate_bound: float, chunk_cap: int = CHUNK_CAP,
                         segment_cells: int = MAX_SEGMENT_CELLS):
    """Draw the faults of n_words words and fold them into ``state`` group by group.

    Cells are numbered word by word, and inside a word in the order of ``positions`` (bit numbers).
    ``apply(state, word_index, mask_1to0, mask_0to1)`` receives one entry per word that has faults
    in the current chunk (word_index unique per call; out of range = unused slot, to be dropped).
    ``p`` and ``q`` are float32 scalars (static or traced); ``rate_bound`` (static) sizes the
    chunks. Returns (state, n_faults, n_zero_to_one) with int32 counts.
    """
    return for_each_fault_group_streams([key], [n_words], positions, p, q, apply, state, rate_bound=rate_bound,
                                        chunk_cap=chunk_cap, segment_cells=segment_cells)


def stream_chunk_blocks(cells, rate_bound: float, chunk_cap: int = CHUNK_CAP) -> list[int]:
    """Blocks per loop iteration of several streams drawn together: each stream's own
    :func:`chunk_blocks` without the cap, scaled down in proportion (at least one block each) when
    together they exceed ``chunk_cap`` faults, so that the streams finish in about as many
    iterations. For one stream this is ``chunk_blocks(cells[0], rate_bound, chunk_cap)``."""
    want = [chunk_blocks(c, rate_bound, chunk_cap=max(int(c), 1)) for c in cells]
    cap = max(1, -(-int(chunk_cap) // BLOCK))
    total = sum(want)
    if total <= cap:
        return want
    return [max(1, b * cap // total) for b in want]


def for_each_fault_group_streams(keys, sizes, positions: np.ndarray, p, q, apply: Callable, state, *,
                                 rate_bound: float, chunk_cap: int = CHUNK_CAP,
                                 segment_cells: int = MAX_SEGMENT_CELLS):
    """:func:`for_each_fault_group` for several word arrays at once, in one loop.

    Array i has ``sizes[i]`` words and draws its faults from ``keys[i]`` (a sequence of keys or a
    key array with one row per array): exactly the faults of
    ``for_each_fault_group(keys[i], sizes[i], ...)``. Its words are numbered after those of arrays
    0..i-1 in ``apply``'s word_index (one state over the concatenated words). Every array's chunk
    is drawn in the same loop iteration (sizes from :func:`stream_chunk_blocks`, ``chunk_cap``
    faults per iteration in all), so a model with many kernels compiles one sampler, not one per
    kernel. Returns (state, n_faults, n_zero_to_one) summed over the arrays.
    """
    S = len(positions)
    nf = jnp.int32(0)
    n01 = jnp.int32(0)
    sizes = [int(n) for n in sizes]
    total_words = sum(sizes)
    if total_words == 0 or S == 0:
        return state, nf, n01
    table = jnp.asarray(positions, U32)
    lam = _lam(p)
    thr, always01 = _type_threshold(q)
    seg_words = max(1, segment_cells // S)
    streams = []  # (array, segment, first word in the concatenation, words)
    offset = 0
    for i, n in enumerate(sizes):
        for s_i, w0 in enumerate(range(0, n, seg_words)):
            streams.append((i, s_i, offset + w0, min(seg_words, n - w0)))
        offset += n
    ns = len(streams)
    cells = [nw * S for _, _, _, nw in streams]
    nbs = stream_chunk_blocks(cells, rate_bound, chunk_cap)
    nb_all = sum(nbs)
    k = nb_all * BLOCK
    if ns > 1:  # one vectorised fold_in for every stream's key
        key_array = keys if isinstance(keys, jax.Array) else jnp.stack(list(keys))
        seg_keys = jax.vmap(jax.random.fold_in)(key_array[jnp.asarray([i for i, _, _, _ in streams])],
                                                jnp.asarray([s_i for _, s_i, _, _ in streams], U32))
    length = jnp.asarray(np.array(cells, np.uint32))
    first_word = jnp.asarray(np.array([w0 for _, _, w0, _ in streams], np.uint32))
    nb_vec = jnp.asarray(np.array(nbs, np.uint32))
    ends = np.cumsum(np.array(nbs) * BLOCK)          # one past each stream's last entry
    last = jnp.asarray(ends - 1)
    first = jnp.asarray(ends - np.array(nbs) * BLOCK)
    if ns == 1:
        seg_key = jax.random.fold_in(keys[streams[0][0]], 0)

        def per_entry(v):                              # a per-stream value at every entry
            return v[0]

        def block_bits(blk):
            return _block_bits(seg_key, blk[0], nb_all)
    else:
        sid = jnp.asarray(np.repeat(np.arange(ns), np.array(nbs) * BLOCK))
        blk_stream = np.repeat(np.arange(ns), nbs)
        blk_local = jnp.asarray(np.concatenate([np.arange(b) for b in nbs]).astype(np.uint32))
        block_keys = seg_keys[jnp.asarray(blk_stream)]

        def per_entry(v):
            return v[sid]

        def block_bits(blk):
            idx = blk[jnp.asarray(blk_stream)] + blk_local
            r = jax.vmap(lambda kk, i: jax.random.bits(jax.random.fold_in(kk, i), (3, BLOCK), U32))(block_keys, idx)
            return jnp.transpose(r, (1, 0, 2)).reshape(3, k)

    def segmented_cumsum(x):
        # the cumulative sum restarted at every stream's first entry (exact modulo 2^32 for uint32,
        # as the unsegmented sum of one stream is)
        c = jnp.cumsum(x, dtype=x.dtype)
        if ns == 1:
            return c
        before = jnp.concatenate([jnp.zeros((1,), x.dtype), c])[first]
        return c - per_entry(before)

    def body(carry):
        state, start, blk, nf, n01 = carry
        r = block_bits(blk)
        # end = start + cumulative steps. Steps are <= 2^30 + 1 and start < L < 2^30, so every
        # end up to the first one past L is exact in uint32; later ones may wrap, but the
        # running count of the "past L" flag marks them invalid anyway.
        end = per_entry(start) + segmented_cumsum(_gaps_from_bits(r[0], r[1], lam) + U32(1))
        valid = segmented_cumsum((end > per_entry(length)).astype(jnp.int32)) == 0
        pos = end - U32(1)
        is01 = ((r[2] < thr) | always01) & valid
        word = jnp.where(valid, pos // U32(S) + per_entry(first_word), U32(total_words)).astype(jnp.int32)
        mask = U32(1) << table[jnp.where(valid, pos % U32(S), 0).astype(jnp.int32)]
        new = jnp.concatenate([jnp.ones((1,), bool), word[1:] != word[:-1]])
        gid = jnp.cumsum(new.astype(jnp.int32)) - 1
        g10 = jax.ops.segment_sum(jnp.where(valid & ~is01, mask, U32(0)), gid, k, indices_are_sorted=True)
        g01 = jax.ops.segment_sum(jnp.where(is01, mask, U32(0)), gid, k, indices_are_sorted=True)
        gword = jnp.full((k,), total_words, jnp.int32).at[gid].set(word)
        state = apply(state, gword, g10, g01)
        # a finished stream starts past its end: its later chunks are all invalid
        nxt = jnp.where(valid[last], end[last], U32(GAP_SATURATION))
        return (state, nxt, blk + nb_vec, nf + jnp.sum(valid, dtype=jnp.int32),
                n01 + jnp.sum(is01, dtype=jnp.int32))

    zeros = jnp.zeros((ns,), U32)
    carry = (state, zeros, zeros, nf, n01)
    state, _, _, nf, n01 = jax.lax.while_loop(lambda c: jnp.any(c[1] < length), body, carry)
    return state, nf, n01
