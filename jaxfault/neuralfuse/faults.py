"""Low-voltage SRAM bit errors on quantized weights (SPEC 3.1).

Every conv/dense kernel is quantized per tensor (symmetric, signed, ``bits`` = 4, 8 or 16) with
:func:`jaxfault.quant.quantize`; each stored bit cell is faulty with probability ``ber`` and a
faulty cell reads 1 with probability ``ber0`` (stuck-at-1) and 0 otherwise (stuck-at-0). On the
two's-complement words: ``q = (q & ~map_1to0) | map_0to1``, sign-extended back, ``W' = q * delta``.

Two placements of the faulty cells:

* ``"independent"`` (default): every bit of every weight of every layer draws its own cell. This
  is the cleaner model (no correlation between layers).
* ``"memory_array"``: the reference's shared map of 8192 rows x 128 bit columns, one per seed and
  reused for every layer. Weight ``k`` of a layer (row-major flatten order) takes row
  ``(k // 256) mod 8192`` and word slot ``k mod 16``; its bit ``b`` (b = 0 is the least significant
  bit of the two's-complement word) is column ``slot * 8 + b``. For 4 or 16 bits the row holds
  ``W = 128 // bits`` words and the same "row pattern repeated 16 times" rule gives row
  ``(k // (16 W)) mod 8192`` and slot ``k mod W`` (for 8 bits: W = 16, exactly the rule above).

All functions are pure and jittable, with ``key`` as the only source of randomness, so they can
be vmapped / lax.mapped over keys (one key = one perturbed model).
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxfault.errors import JaxfaultError, check_probability
from jaxfault.pytree import map_kernels_with_index
from jaxfault.quant import check_bits, quantize

PLACEMENTS = ("independent", "memory_array")
ARRAY_ROWS = 8192
ARRAY_COLS = 128
ROW_REPEAT = 16  # consecutive words sharing a row pattern in the reference layout = 16 * words/row

PyTree = Any


def check_placement(placement: str) -> str:
    """Validate the placement name."""
    if placement not in PLACEMENTS:
        raise JaxfaultError(f"unknown fault placement {placement!r}; choose one of {', '.join(PLACEMENTS)}")
    return placement


def _check_rate(name: str, value) -> None:
    # Python numbers are validated eagerly; traced values (sweeps inside jit) are the caller's job.
    if isinstance(value, (int, float)):
        check_probability(name, value)


OK, STUCK1, STUCK0 = 0, 1, 2  # cell codes


def _is_static(x) -> bool:
    return isinstance(x, (int, float))


def max_faults(num_cells: int, ber: float) -> int:
    """Static capacity of the sparse sampler: mean + 10 standard deviations + 16 (capped at
    num_cells). The chance that a Binomial(num_cells, ber) count exceeds it is < 1e-20; cells
    beyond the capacity would stay fault-free."""
    mean = num_cells * ber
    return int(min(num_cells, math.ceil(mean + 10.0 * math.sqrt(mean * (1.0 - ber)) + 16)))


def cell_codes(key: jax.Array, num_cells: int, ber, ber0=0.5) -> jax.Array:
    """int8 codes for num_cells independent bit cells: 0 ok, 1 stuck-at-1, 2 stuck-at-0.

    Each cell is faulty with probability ber, a faulty cell is stuck at 1 with probability ber0.
    With a Python-number ber the faulty cells are drawn sparsely (geometric gaps between
    successive faulty cells, exact Bernoulli(ber) per cell): about 2 * ber * num_cells random
    numbers instead of num_cells, which makes drawing a perturbed model ~50x cheaper at 1 % BER.
    A traced ber (e.g. a BER sweep inside one jit) uses one uniform per cell.
    """
    k_pos, k_val = jax.random.split(key)
    if _is_static(ber):
        ber = float(ber)
        if ber == 0.0 or num_cells == 0:
            return jnp.zeros((num_cells,), jnp.int8)
        kmax = max_faults(num_cells, ber)
        u = jax.random.uniform(k_pos, (kmax,), jnp.float32, minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
        if ber >= 1.0:
            gaps = jnp.ones((kmax,), jnp.int32)
        else:
            gaps = jnp.floor(jnp.log(u) / jnp.float32(math.log1p(-ber))).astype(jnp.int32) + 1
        pos = jnp.cumsum(gaps) - 1
        stuck1 = jax.random.uniform(k_val, (kmax,), jnp.float32) < jnp.asarray(ber0, jnp.float32)
        vals = jnp.where(stuck1, STUCK1, STUCK0).astype(jnp.int8)
        return jnp.zeros((num_cells,), jnp.int8).at[pos].set(vals, mode="drop")
    ber = jnp.asarray(ber, jnp.float32)
    u = jax.random.uniform(k_pos, (num_cells,), jnp.float32)
    faulty = u < ber
    stuck1 = jax.random.uniform(k_val, (num_cells,), jnp.float32) < jnp.asarray(ber0, jnp.float32)
    return jnp.where(faulty, jnp.where(stuck1, STUCK1, STUCK0), OK).astype(jnp.int8)


def codes_to_masks(codes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """codes [..., bits] (bit b = 0 is the least significant) -> (map_0to1, map_1to0) int32 words."""
    bits = codes.shape[-1]
    weights = jnp.left_shift(jnp.int32(1), jnp.arange(bits, dtype=jnp.int32))
    m01 = jnp.sum(jnp.where(codes == STUCK1, weights, 0), axis=-1, dtype=jnp.int32)
    m10 = jnp.sum(jnp.where(codes == STUCK0, weights, 0), axis=-1, dtype=jnp.int32)
    return m01, m10


def memory_array_codes(key: jax.Array, ber, ber0=0.5) -> jax.Array:
    """The per-seed 8192 x 128 array of cell codes of the memory-array placement."""
    return cell_codes(key, ARRAY_ROWS * ARRAY_COLS, ber, ber0).reshape(ARRAY_ROWS, ARRAY_COLS)


def memory_array_index(n: int, bits: int = 8, k: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(row, column) index arrays of shape [n, bits]: where bit b of weight k lives in the array
    (k = 0..n-1, or the given weight indices k)."""
    words_per_row = ARRAY_COLS // bits
    k = jnp.arange(n, dtype=jnp.int32) if k is None else jnp.asarray(k, jnp.int32)
    row = (k // (ROW_REPEAT * words_per_row)) % ARRAY_ROWS
    slot = k % words_per_row
    cols = slot[:, None] * bits + jnp.arange(bits, dtype=jnp.int32)[None, :]
    rows = jnp.broadcast_to(row[:, None], cols.shape)
    return rows, cols


def fault_masks(key: jax.Array, n: int, ber, ber0=0.5, bits: int = 8,
                placement: str = "independent", array_codes: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(map_0to1, map_1to0): int32 bit masks (low ``bits`` bits used) for n consecutive weights.

    For the memory-array placement ``array_codes`` (from :func:`memory_array_codes`) is the
    shared per-seed array (drawn from ``key`` when not given).
    """
    if placement == "independent":
        codes = cell_codes(key, n * bits, ber, ber0).reshape(n, bits)
    else:
        if array_codes is None:
            array_codes = memory_array_codes(key, ber, ber0)
        rows, cols = memory_array_index(n, bits)
        codes = array_codes[rows, cols]
    return codes_to_masks(codes)


def to_unsigned(q: jax.Array, bits: int) -> jax.Array:
    """Two's-complement bit pattern of signed ints q in the low ``bits`` bits (int32 holder)."""
    return jnp.bitwise_and(q.astype(jnp.int32), (1 << bits) - 1)


def sign_extend(u: jax.Array, bits: int) -> jax.Array:
    """Inverse of to_unsigned: interpret the low ``bits`` bits as a signed two's-complement word."""
    u = jnp.bitwise_and(u.astype(jnp.int32), (1 << bits) - 1)
    return jnp.where(u >= (1 << (bits - 1)), u - (1 << bits), u)


def apply_stuck_at(q: jax.Array, map_0to1: jax.Array, map_1to0: jax.Array, bits: int) -> jax.Array:
    """q' = (q & ~map_1to0) | map_0to1 on the two's-complement words, sign-extended back."""
    u = to_unsigned(q, bits)
    u = jnp.bitwise_or(jnp.bitwise_and(u, jnp.bitwise_not(map_1to0)), map_0to1)
    return sign_extend(u, bits)


def perturb_kernel(w: jax.Array, key: jax.Array, ber, ber0=0.5, bits: int = 8,
                   placement: str = "independent", array_codes: jax.Array | None = None,
                   straight_through: bool = True) -> jax.Array:
    """Quantize one kernel, inject stuck-at faults, return the dequantized faulty kernel.

    With straight_through the value is exactly W' and the gradient wrt w is the identity (STE).
    """
    q, delta = quantize(w, bits)
    m01, m10 = fault_masks(key, w.size, ber, ber0, bits, placement, array_codes)
    qf = apply_stuck_at(q.reshape(-1), m01, m10, bits).reshape(w.shape)
    wf = (qf.astype(jnp.float32) * delta).astype(w.dtype)
    if straight_through:
        return _straight_through(w, jax.lax.stop_gradient(wf))
    return wf


@jax.custom_jvp
def _straight_through(w: jax.Array, wf: jax.Array) -> jax.Array:
    """Forward: exactly wf (bit-exact, unlike w + stop_gradient(wf - w)); derivative wrt w: identity."""
    return wf


@_straight_through.defjvp
def _straight_through_jvp(primals, tangents):
    w, wf = primals
    dw, _ = tangents
    return wf, dw


def perturb_params(params: PyTree, key: jax.Array, ber, ber0=0.5, bits: int = 8,
                   placement: str = "independent", straight_through: bool = True) -> PyTree:
    """One perturbed model: every conv/dense kernel quantized, faulted and dequantized.

    Pure in (params, key): the same key gives the same perturbed model. Kernel i uses
    ``fold_in(key, i)`` (independent placement) or the one shared memory array of ``key``.
    Biases, batch-norm parameters etc. are unchanged. Run the result with the model's
    ``clone(quant_bits=None)`` (the weights are already dequantized).
    """
    _check_rate("ber", ber)
    _check_rate("ber0", ber0)
    bits = check_bits(bits)
    check_placement(placement)
    array_codes = memory_array_codes(key, ber, ber0) if placement == "memory_array" else None

    def one(i, w):
        return perturb_kernel(w, jax.random.fold_in(key, i), ber, ber0, bits, placement, array_codes,
                              straight_through)

    return map_kernels_with_index(one, params)


def perturb_variables(variables: dict, key: jax.Array, ber, ber0=0.5, bits: int = 8,
                      placement: str = "independent") -> dict:
    """perturb_params applied to variables["params"]; other collections (batch_stats) unchanged."""
    out = dict(variables)
    out["params"] = perturb_params(variables["params"], key, ber, ber0, bits, placement)
    return out
