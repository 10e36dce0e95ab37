"""Where the faulty cells of a layer's integer words come from: placements and weight orders.

Two placements:

* ``"independent"``: every bit cell of every word of every layer is its own Bernoulli draw
  (the words of one layer are sampled with :func:`jaxfault.faults.stuck_at_maps`).
* ``"memory_array"``: one physical array of ARRAY_ROWS x ARRAY_COLS = 8192 x 128 bit cells is
  drawn per key (with the same sampler: the array is 8192 x 4 uint32 words, column c of row r
  being bit c % 32 of word 4 r + c // 32) and reused for every layer. A row holds
  W = 128 // bits words; word k of a layer takes slot ``k mod W`` of row
  ``(k // R) mod 8192``, and its bit b (b = 0: least significant) is column ``slot * bits + b``.
  The row period R is 16 W (each row pattern repeated 16 times; for 8-bit words R = 256) by
  default, or W * W with ``compat=True`` (the reference code's rule; equal to 16 W for 8 bits).

The weight order ``k`` of a kernel is given by a layout: ``"flax"`` is the row-major flatten
of the Flax kernel (conv HWIO, dense (in, out)); ``"torch"`` is PyTorch's (conv OIHW, dense
(out, in)), so that a map recorded by PyTorch code lands on the same physical weights.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault.core.errors import JaxfaultError, check
from jaxfault.faults import words as fw

U32 = jnp.uint32
PLACEMENTS = ("independent", "memory_array")
LAYOUTS = ("flax", "torch")
ARRAY_ROWS = 8192
ARRAY_COLS = 128
ARRAY_WORDS_PER_ROW = ARRAY_COLS // 32
ROW_REPEAT = 16


def check_placement(placement: str) -> str:
    """Validate a placement name."""
    if placement not in PLACEMENTS:
        raise JaxfaultError(f"unknown fault placement {placement!r}; choose one of {', '.join(PLACEMENTS)}")
    return placement


def check_layout(layout: str) -> str:
    """Validate a weight-order name."""
    if layout not in LAYOUTS:
        raise JaxfaultError(f"unknown weight layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    return layout


# --------------------------------------------------------------------------------- weight order
def resolve_layout(layout: str | None, placement: str) -> str:
    """The weight order to use: ``layout`` if given, else the placement's default. The memory
    array defaults to ``"torch"``, the reference's storage order, because there the order decides
    which weights share a row's fault pattern; independent faults default to ``"flax"``, because
    there the order only permutes i.i.d. draws and Flax's order needs no transpose."""
    check_placement(placement)
    if layout is None:
        return "torch" if placement == "memory_array" else "flax"
    return check_layout(layout)


def _torch_perm(ndim: int) -> tuple[int, ...]:
    # Flax (*spatial, in, out) -> torch (out, in, *spatial); 2-D (in, out) -> (out, in)
    return (ndim - 1, ndim - 2, *range(ndim - 2))


def to_layout_order(x: jax.Array, layout: str) -> jax.Array:
    """Flatten a Flax-shaped kernel in the given weight order (1-D result)."""
    check_layout(layout)
    if layout == "flax" or x.ndim < 2:
        return jnp.reshape(x, (-1,))
    return jnp.reshape(jnp.transpose(x, _torch_perm(x.ndim)), (-1,))


def from_layout_order(flat: jax.Array, shape: tuple[int, ...], layout: str) -> jax.Array:
    """Inverse of :func:`to_layout_order`: the 1-D weights back in the Flax shape."""
    check_layout(layout)
    shape = tuple(shape)
    if layout == "flax" or len(shape) < 2:
        return jnp.reshape(flat, shape)
    perm = _torch_perm(len(shape))
    tshape = tuple(shape[i] for i in perm)
    return jnp.transpose(jnp.reshape(flat, tshape), np.argsort(perm))


# --------------------------------------------------------------------------------- memory array
def _check_bits_divide(bits: int) -> int:
    check(isinstance(bits, (int, np.integer)) and not isinstance(bits, bool) and 1 <= int(bits) <= 32,
          f"memory-array words must be 1 to 32 bits wide, got {bits!r}")
    return int(bits)


def memory_array_maps(key, ber, zero_to_one=0.5, *, rate_bound=None):
    """(map_1to0, map_0to1, FaultStats): the 8192 x 4 uint32 cell maps of one memory array."""
    m10, m01, st = fw.stuck_at_maps(key, ARRAY_ROWS * ARRAY_WORDS_PER_ROW, ber, zero_to_one, rate_bound=rate_bound)
    return m10.reshape(ARRAY_ROWS, ARRAY_WORDS_PER_ROW), m01.reshape(ARRAY_ROWS, ARRAY_WORDS_PER_ROW), st


def pack_cells(cells) -> jax.Array:
    """An 8192 x 128 array of 0/1 cells -> 8192 x 4 uint32 words (column c = bit c % 32 of word c // 32)."""
    cells = jnp.asarray(cells)
    check(cells.shape == (ARRAY_ROWS, ARRAY_COLS),
          f"a memory-array map must have shape ({ARRAY_ROWS}, {ARRAY_COLS}), got {tuple(cells.shape)}")
    bits = (cells != 0).astype(U32).reshape(ARRAY_ROWS, ARRAY_WORDS_PER_ROW, 32)
    return jnp.sum(bits << jnp.arange(32, dtype=U32), axis=-1, dtype=U32)


def unpack_cells(words) -> jax.Array:
    """Inverse of :func:`pack_cells`: 8192 x 4 uint32 -> 8192 x 128 bool."""
    words = jnp.asarray(words, U32)
    return (((words[..., None] >> jnp.arange(32, dtype=U32)) & U32(1)) != 0).reshape(ARRAY_ROWS, ARRAY_COLS)


def memory_array_rows_slots(k, bits: int, compat: bool = False):
    """(row, slot) of word indices k in the memory array (see the module docstring)."""
    bits = _check_bits_divide(bits)
    per_row = ARRAY_COLS // bits
    period = per_row * per_row if compat else ROW_REPEAT * per_row
    k = jnp.asarray(k, jnp.int32)
    return (k // period) % ARRAY_ROWS, k % per_row


def memory_array_word_maps(map_1to0, map_0to1, n: int, bits: int, compat: bool = False, *, start: int = 0):
    """(map_1to0, map_0to1) uint32 of shape (n,): the cells under words start..start+n-1 (low
    ``bits`` bits). A row holds ``128 // bits`` words; when bits does not divide 32 a word may
    span two uint32 columns of its row (the row's last ``128 % bits`` columns stay unused)."""
    bits = _check_bits_divide(bits)
    row, slot = memory_array_rows_slots(int(start) + jnp.arange(n, dtype=jnp.int32), bits, compat)
    col0 = slot * bits
    widx = row * ARRAY_WORDS_PER_ROW + col0 // 32
    shift = (col0 % 32).astype(U32)
    low = U32(fw.int_stored_mask(bits)) if bits < 32 else U32(0xFFFFFFFF)
    spans = 32 % bits != 0

    def take(m):
        flat = jnp.reshape(jnp.asarray(m, U32), (-1,))
        w = flat[widx] >> shift
        if spans:  # the high part of a word that continues in the next column word of the row
            nxt = flat[jnp.minimum(widx + 1, flat.shape[0] - 1)]
            w = w | jnp.where(shift > 0, nxt << (U32(32) - jnp.maximum(shift, U32(1))), U32(0))
        return w & low

    return take(map_1to0), take(map_0to1)
